/**
 * Kernel settings chosen by timing them on this machine (the build step's autotuning). The native
 * CPU backend names its candidates (`native().tuningCandidates()`: tile shapes of the quantized
 * and float GEMM micro-kernels, the grain threads split the output rows at); each is timed on the
 * model itself — decode steps of one sequence, of a batch, and a prefill chunk — and the fastest
 * per regime is kept. The result travels in the plan (`weft.plan.tuning`) and is handed to the
 * engine at load (EngineOptions.tuning).
 */
import { Engine } from './engine.js';
import type { ModelConfig } from './config.js';
import { native } from './native.js';

/** One candidate's settings (names and values are the native backend's). */
export type KernelTuning = Record<string, number>;
/** The settings for each kind of step. */
export interface PlanTuning {
  decode1: KernelTuning;
  batch: KernelTuning;
  prefill: KernelTuning;
}

export interface TuneOptions {
  threads?: number;
  log?: (line: string) => void;
  /** Timed repetitions per candidate and regime (best kept). Default 3. */
  repeats?: number;
}

export interface TuningResult extends PlanTuning {
  /** Milliseconds per step of each candidate in each regime (for the report). */
  timings: { candidate: KernelTuning; decode1Ms: number; batchMs: number; prefillMs: number }[];
  threads: number;
}

const BATCH = 16;
const PREFILL = 128;

async function timeSteps(engine: Engine, repeats: number): Promise<{ decode1Ms: number; batchMs: number; prefillMs: number }> {
  const V = engine.config.vocabSize;
  const tokens = (n: number, seed: number) => Array.from({ length: n }, (_, i) => (i * 7919 + seed * 104729 + 11) % V);
  const best = async (fn: () => Promise<void>) => {
    let min = Infinity;
    for (let r = 0; r < repeats; r++) {
      const t0 = performance.now();
      await fn();
      min = Math.min(min, performance.now() - t0);
    }
    return min;
  };
  const seqs = Array.from({ length: BATCH }, () => engine.createSequence({ ignoreEos: true }));
  try {
    await engine.run(seqs.map((s, i) => ({ sequence: s, tokens: tokens(8, i) })));
    const decode1Ms = await best(async () => void (await engine.run([{ sequence: seqs[0]!, tokens: [1], logits: 'last' }])));
    const batchMs = await best(async () => void (await engine.run(seqs.map((s) => ({ sequence: s, tokens: [2], logits: 'last' as const })))));
    const scratch = engine.createSequence({ ignoreEos: true });
    const prefillMs = await best(async () => {
      scratch.truncate(0);
      await engine.run([{ sequence: scratch, tokens: tokens(PREFILL, 99), logits: 'last' }]);
    });
    scratch.free();
    return { decode1Ms, batchMs, prefillMs };
  } finally {
    for (const s of seqs) s.free();
  }
}

/**
 * Times the backend's candidates on the model at `modelPath` (a plan just written, so that the
 * kernels timed are the ones it will run). Returns undefined when the backend offers one candidate.
 */
export async function autotune(modelPath: string, config: ModelConfig, opts: TuneOptions = {}): Promise<TuningResult | undefined> {
  const addon = native();
  const candidates = typeof addon.tuningCandidates === 'function' ? addon.tuningCandidates() : [];
  if (candidates.length < 2) return undefined;
  const log = opts.log ?? (() => {});
  const repeats = opts.repeats ?? 3;
  const threads = opts.threads ?? (await import('node:os')).availableParallelism();
  const timings: TuningResult['timings'] = [];
  for (const candidate of candidates) {
    const engine = await Engine.load(modelPath, {
      threads, tokenizer: false, tuning: { decode1: candidate, batch: candidate, prefill: candidate }, maxBatchTokens: PREFILL, maxBatchSequences: BATCH + 1,
      kvMemoryBytes: 2 * (BATCH + 2) * (PREFILL + 32) * 2 * config.numLayers * config.numKvHeads * config.headDim + (1 << 20),
    });
    try {
      const t = await timeSteps(engine, repeats);
      timings.push({ candidate, ...t });
      log(`weft build: tuning ${JSON.stringify(candidate)}: decode x1 ${t.decode1Ms.toFixed(2)} ms, x${BATCH} ${t.batchMs.toFixed(2)} ms, prefill ${PREFILL} ${t.prefillMs.toFixed(1)} ms`);
    } finally {
      engine.dispose();
    }
  }
  const pick = (key: 'decode1Ms' | 'batchMs' | 'prefillMs') => timings.reduce((a, b) => (b[key] < a[key] ? b : a)).candidate;
  return { decode1: pick('decode1Ms'), batch: pick('batchMs'), prefill: pick('prefillMs'), timings, threads };
}
