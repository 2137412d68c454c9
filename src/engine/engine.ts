/**
 * The engine: one model's weights (loaded once, shared read-only), its paged KV pool, the
 * sequences that own KV pages, and a pool of execution contexts leased one step at a time.
 */
import { availableParallelism } from 'node:os';
import { randomInt } from 'node:crypto';
import { WeftError, toWeftError } from '../errors.js';
import { Tokenizer } from '../tokenizer/tokenizer.js';
import { cudaUnsupported, nativeConfig, type ModelConfig } from './config.js';
import { PLAN_QUANTIZE, type PlanQuantize } from './plan.js';

/** What Engine.load's `quantize` takes: a CPU plan's quantization, or fp8 on the GPU. */
export type EngineQuantize = PlanQuantize | 'fp8';
export const ENGINE_QUANTIZE: readonly EngineQuantize[] = [...PLAN_QUANTIZE, 'fp8'];
import { prepareModel } from './prepare.js';
import type { PlanTuning } from './tune.js';
import { ContextPool, type ContextLease } from './contextPool.js';
import { native, type NativeEngine, type NativeStats } from './native.js';
import type { TensorInfo } from './safetensors.js';
import { resolveWeights, tensorSpecs } from './weights.js';

export type BackendName = 'cpu' | 'cuda';

/**
 * The backend a load gets when none is named: WEFT_BACKEND when set, else cuda when this build
 * has the CUDA backend and a GPU is visible, else cpu.
 */
export function defaultBackend(): BackendName {
  const env = process.env.WEFT_BACKEND;
  if (env === 'cpu' || env === 'cuda') return env;
  const addon = native();
  return addon.cudaBuilt && addon.cudaDeviceCount() > 0 ? 'cuda' : 'cpu';
}

export interface EngineOptions {
  /** cpu or cuda. Default: defaultBackend(). */
  backend?: BackendName;
  /** CUDA device ordinal. Default 0. */
  cudaDevice?: number;
  /** Execution contexts (steps that may run at the same time). Default 1. */
  contexts?: number;
  /** Threads per context (CPU backend). Default: the machine's cores divided among the contexts. */
  threads?: number;
  /** Most tokens in one step (prefill chunk + decode tokens). Default 512. */
  maxBatchTokens?: number;
  /** Most sequences in one step. Default 64. */
  maxBatchSequences?: number;
  /** Most rows of logits one step may return or sample from. Default: maxBatchSequences. */
  maxLogitRows?: number;
  /** Context length limit; default and upper bound: the model's max_position_embeddings. */
  maxContext?: number;
  /** KV pool size in bytes. Default 256 MiB (on CUDA: at most what device memory leaves). */
  kvMemoryBytes?: number;
  /** Tokens per KV page. Default 16. */
  kvPageTokens?: number;
  /** KV element type. Default: f32 for f32 checkpoints on the CPU, f16 otherwise. */
  kvDtype?: 'f32' | 'f16';
  /** Load the model's tokenizer (default true when it has one). */
  tokenizer?: boolean;
  /**
   * Run the model quantized: Q8_0, or Q4_K (Q6_K LM head). The quantized weights are an engine plan
   * built once and cached (src/engine/prepare.ts, docs/models.md). `fp8` (cuda backend only): the
   * layers' matrices as FP8 E4M3 with a scale per output row, quantized on the GPU at load
   * (docs/cuda.md); activations, embeddings and the LM head keep the checkpoint's precision.
   */
  quantize?: EngineQuantize;
  /** Progress lines of a load (plan builds). */
  log?: (line: string) => void;
  /** Kernel settings per kind of step (default: the plan's, else the backend's defaults). */
  tuning?: PlanTuning;
}

export interface SamplingOptions {
  temperature?: number; // 0 (default): greedy
  topK?: number;
  topP?: number;
  minP?: number;
  repetitionPenalty?: number;
  presencePenalty?: number;
  frequencyPenalty?: number;
  /** Same seed, same draws. Default: a random seed. */
  seed?: number;
  /** Extra stop token ids; the model's EOS ids are added unless ignoreEos. */
  stopTokens?: number[];
  ignoreEos?: boolean;
  /** Top-n log-probabilities to return with each sampled token (0..20). */
  logprobs?: number;
}

export type LogitsMode = 'none' | 'last' | 'all';

export interface StepEntry {
  sequence: Sequence;
  tokens: ArrayLike<number>;
  /** Which logits to return (default 'none'). */
  logits?: LogitsMode;
  /** Sample the next token from the last position with the sequence's sampling settings. */
  sample?: boolean;
}

export interface StepResult {
  sequence: Sequence;
  token?: number;
  logprob?: number;
  top?: { token: number; logprob: number }[];
  /** The sampled token is one of the stop tokens. */
  stop?: boolean;
  /** rows x vocab, row-major */
  logits?: Float32Array;
}

const LOGITS_CODE: Record<LogitsMode, 0 | 1 | 2> = { none: 0, last: 1, all: 2 };

function call<T>(fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    throw toWeftError(err);
  }
}

function intOption(value: number | undefined, name: string, fallback: number, min: number): number {
  if (value === undefined) return fallback;
  if (!Number.isInteger(value) || value < min) throw new WeftError('WEFT_BAD_ARGUMENT', `${name} must be an integer >= ${min} (got ${value})`);
  return value;
}

/** A sequence owns its KV pages across steps: a later turn prefills only its new tokens. */
export class Sequence {
  constructor(
    readonly engine: Engine,
    readonly id: number,
  ) {}

  /** Tokens whose KV is cached. */
  get numTokens(): number {
    return this.info().numTokens;
  }

  info() {
    return call(() => this.engine.native.sequenceInfo(this.id));
  }

  setSampling(options: SamplingOptions = {}): void {
    this.engine.setSampling(this, options);
  }

  /** Keeps the first n tokens' KV and drops the rest. */
  truncate(numTokens: number): void {
    call(() => this.engine.native.truncateSequence(this.id, numTokens));
  }

  /** Moves the KV to host memory and returns its pages to the pool. */
  async park(): Promise<void> {
    call(() => this.engine.native.parkSequence(this.id));
  }

  /** Brings parked KV back into the pool (WEFT_KV_EXHAUSTED when no pages are free). */
  async restore(): Promise<void> {
    call(() => this.engine.native.restoreSequence(this.id));
  }

  free(): void {
    call(() => this.engine.native.freeSequence(this.id));
  }
}

/** A plan's recorded tuning, when it has one for every kind of step. */
function planTuning(t: Record<string, unknown> | undefined): PlanTuning | undefined {
  if (!t || typeof t.decode1 !== 'object' || typeof t.batch !== 'object' || typeof t.prefill !== 'object') return undefined;
  return { decode1: t.decode1 as PlanTuning['decode1'], batch: t.batch as PlanTuning['batch'], prefill: t.prefill as PlanTuning['prefill'] };
}

export class Engine {
  private disposed = false;

  private constructor(
    readonly dir: string,
    readonly config: ModelConfig,
    readonly native: NativeEngine,
    readonly contexts: ContextPool,
    readonly tokenizer: Tokenizer | undefined,
    readonly dtype: TensorInfo['dtype'],
  ) {}

  static async load(dir: string, options: EngineOptions = {}): Promise<Engine> {
    const fp8 = options.quantize === 'fp8';
    if (options.quantize !== undefined && !fp8 && !PLAN_QUANTIZE.includes(options.quantize as PlanQuantize)) {
      throw new WeftError('WEFT_BAD_ARGUMENT', `quantize must be one of ${ENGINE_QUANTIZE.join(', ')} (got ${String(options.quantize)})`);
    }
    const source = await prepareModel(dir, { quantize: fp8 ? undefined : (options.quantize as PlanQuantize | undefined), log: options.log });
    const root = source.path;
    const config = source.config;
    const weights = resolveWeights(config, source.tensors);
    const { files, specs } = tensorSpecs(weights);

    const contexts = intOption(options.contexts, 'contexts', 1, 1);
    const threads = intOption(options.threads, 'threads', Math.max(1, Math.floor(availableParallelism() / contexts)), 1);
    const maxBatchSequences = intOption(options.maxBatchSequences, 'maxBatchSequences', 64, 1);
    const kvMemoryBytes = options.kvMemoryBytes ?? 256 * 2 ** 20;
    if (!Number.isFinite(kvMemoryBytes) || kvMemoryBytes <= 0) throw new WeftError('WEFT_BAD_ARGUMENT', `kvMemoryBytes must be a positive number (got ${kvMemoryBytes})`);
    const backend = options.backend ?? defaultBackend();
    if (backend !== 'cpu' && backend !== 'cuda') throw new WeftError('WEFT_BAD_ARGUMENT', `backend must be cpu or cuda (got ${String(backend)})`);
    if (backend === 'cuda') {
      const missing = cudaUnsupported(config);
      if (missing) throw missing;
    }
    if (fp8 && backend !== 'cuda') {
      throw new WeftError('WEFT_BAD_ARGUMENT', 'quantize fp8 runs on the cuda backend (on the CPU, quantize to q8_0 or q4_k)');
    }
    const kvDtype = options.kvDtype ?? (weights.embed.dtype === 'F32' && backend === 'cpu' ? 'f32' : 'f16');
    if (kvDtype !== 'f32' && kvDtype !== 'f16') throw new WeftError('WEFT_BAD_ARGUMENT', `kvDtype must be f32 or f16 (got ${String(kvDtype)})`);

    const addon = native();
    const engine = call(
      () =>
        new addon.NativeEngine({
          config: nativeConfig(config),
          files,
          tensors: specs,
          options: {
            contexts, threads, maxBatchSequences,
            maxBatchTokens: intOption(options.maxBatchTokens, 'maxBatchTokens', 512, 1),
            maxLogitRows: intOption(options.maxLogitRows, 'maxLogitRows', maxBatchSequences, 1),
            maxContext: intOption(options.maxContext, 'maxContext', 0, 0),
            kvMemoryBytes,
            kvPageTokens: intOption(options.kvPageTokens, 'kvPageTokens', 16, 1),
            kvDtype: kvDtype === 'f32' ? 'F32' : 'F16',
            backend,
            cudaDevice: intOption(options.cudaDevice, 'cudaDevice', 0, 0),
            tuning: options.tuning ?? planTuning(source.plan?.tuning),
            // fp8: every layer matrix FP8 on the GPU; without it, an FP8 checkpoint's per-row-scaled matrices still are
            weightFormat: fp8 ? 'fp8' : 'source',
          },
        }),
    );
    try {
      await engine.load();
    } catch (err) {
      throw toWeftError(err);
    }
    const parts = (options.tokenizer ?? source.hasTokenizer) ? await source.tokenizer() : undefined;
    if (options.tokenizer === true && !parts) throw new WeftError('WEFT_TOKENIZER', `${root} has no tokenizer`);
    const tokenizer = parts
      ? Tokenizer.fromJSON(parts.json, parts.config, { jsonPath: parts.jsonPath, chatTemplate: parts.chatTemplate, eosTokenIds: parts.eosTokenIds })
      : undefined;
    return new Engine(root, config, engine, new ContextPool(contexts), tokenizer, weights.embed.dtype);
  }

  private check(): void {
    if (this.disposed) throw new WeftError('WEFT_DISPOSED', 'the engine was disposed');
  }

  createSequence(sampling?: SamplingOptions): Sequence {
    this.check();
    const seq = new Sequence(this, call(() => this.native.createSequence()));
    seq.setSampling(sampling);
    return seq;
  }

  setSampling(seq: Sequence, s: SamplingOptions = {}): void {
    this.check();
    const num = (v: unknown, name: string, fallback: number): number => {
      if (v === undefined) return fallback;
      if (typeof v !== 'number' || Number.isNaN(v)) throw new WeftError('WEFT_BAD_ARGUMENT', `sampling.${name} must be a number (got ${String(v)})`);
      return v;
    };
    const stop = s.stopTokens ?? [];
    if (!Array.isArray(stop) || stop.some((t) => !Number.isInteger(t))) throw new WeftError('WEFT_BAD_ARGUMENT', 'sampling.stopTokens must be an array of token ids');
    const stopTokens = s.ignoreEos ? [...stop] : [...new Set([...stop, ...this.config.eosTokenIds, ...(this.tokenizer?.eosTokenIds ?? [])])];
    const seed = num(s.seed, 'seed', randomInt(0, 2 ** 47));
    const topK = num(s.topK, 'topK', 0);
    const logprobs = num(s.logprobs, 'logprobs', 0);
    if (!Number.isInteger(topK)) throw new WeftError('WEFT_BAD_ARGUMENT', `sampling.topK must be an integer (got ${topK})`);
    if (!Number.isInteger(logprobs)) throw new WeftError('WEFT_BAD_ARGUMENT', `sampling.logprobs must be an integer (got ${logprobs})`);
    if (!Number.isSafeInteger(seed) || seed < 0) throw new WeftError('WEFT_BAD_ARGUMENT', `sampling.seed must be a non-negative integer (got ${seed})`);
    call(() =>
      this.native.setSampling(seq.id, {
        temperature: num(s.temperature, 'temperature', 0),
        topK,
        topP: num(s.topP, 'topP', 1),
        minP: num(s.minP, 'minP', 0),
        repetitionPenalty: num(s.repetitionPenalty, 'repetitionPenalty', 1),
        presencePenalty: num(s.presencePenalty, 'presencePenalty', 0),
        frequencyPenalty: num(s.frequencyPenalty, 'frequencyPenalty', 0),
        seed,
        stopTokens,
        logprobs,
      }),
    );
  }

  /**
   * One forward pass on a leased context over a batch mixing prefill chunks and decode tokens.
   * Validation errors reject before anything changes; on any failure no sequence gains tokens.
   */
  async step(lease: ContextLease, entries: StepEntry[]): Promise<StepResult[]> {
    this.check();
    if (!Array.isArray(entries)) throw new WeftError('WEFT_BAD_ARGUMENT', 'step entries must be an array');
    const nativeEntries = entries.map((e, i) => {
      if (!(e?.sequence instanceof Sequence) || e.sequence.engine !== this) throw new WeftError('WEFT_BAD_ARGUMENT', `step entry ${i}: not a sequence of this engine`);
      const mode = e.logits ?? 'none';
      if (!(mode in LOGITS_CODE)) throw new WeftError('WEFT_BAD_ARGUMENT', `step entry ${i}: logits must be none, last or all`);
      const tokens = e.tokens instanceof Int32Array ? e.tokens : Array.from(e.tokens);
      return { seq: e.sequence.id, tokens, logits: LOGITS_CODE[mode], sample: e.sample === true };
    });
    let results;
    try {
      results = await this.native.step(lease.index, nativeEntries);
    } catch (err) {
      const e = toWeftError(err);
      // the step's GPU work did not finish: the context serves again once it drained
      if (e.code === 'WEFT_DEVICE_TIMEOUT') this.contexts.setAside(lease, () => !this.disposed && this.native.contextReady(lease.index));
      throw e;
    }
    if (Array.isArray(results)) return results.map((r, i) => ({ ...r, sequence: entries[i]!.sequence }));
    const { seqs, tokens, logprobs, flags } = results;
    const out: StepResult[] = new Array(entries.length);
    for (let i = 0; i < entries.length; i++) {
      const f = flags[i]!;
      out[i] = f & 1
        ? ({ seq: seqs[i]!, token: tokens[i]!, logprob: logprobs[i]!, stop: (f & 2) !== 0, sequence: entries[i]!.sequence } as StepResult)
        : ({ seq: seqs[i]!, sequence: entries[i]!.sequence } as StepResult);
    }
    return out;
  }

  /** Leases a context, runs one step and returns the context to the pool. */
  async run(entries: StepEntry[], signal?: AbortSignal): Promise<StepResult[]> {
    const lease = await this.contexts.acquire(signal);
    try {
      return await this.step(lease, entries);
    } finally {
      lease.release();
    }
  }

  /** The GPU context is unusable (a sticky device fault): every step fails with WEFT_DEVICE_LOST. */
  get deviceLost(): boolean {
    if (this.disposed) return false;
    try {
      return this.native.stats().deviceLost === true;
    } catch {
      return false;
    }
  }

  stats(): NativeStats {
    this.check();
    return call(() => this.native.stats());
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    this.contexts.close();
    this.native.dispose();
    this.tokenizer?.dispose?.();
  }
}
