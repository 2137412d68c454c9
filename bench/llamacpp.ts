/**
 * llama.cpp as the benchmark peer, through node-llama-cpp's prebuilt CPU binaries.
 *
 * Never downloads or builds: getLlama({ gpu: false, build: 'never', skipDownload: true,
 * usePrebuiltBinaries: true }) either loads the prebuilt linux-x64 CPU addon or throws.
 *
 * Token ids are fed directly (no tokenizer). Sampling is greedy (temperature 0, no penalties).
 * N concurrent sequences share one LlamaContext({ sequences: N }); every decode step issues
 * controlledEvaluate() for all N sequences in the same tick, so node-llama-cpp's batch queue
 * ("nextCycle" dispatch) puts the N tokens into a single llama_decode call.
 */
import { getLlama } from 'node-llama-cpp';
import type { Llama, LlamaContext, LlamaContextSequence, LlamaModel, Token } from 'node-llama-cpp';

export interface LlamaCppRunOptions {
  threads: number;
  /** Prompt length for the prefill measurement. */
  promptTokens: number;
  /** Decode steps timed per sequence in each decode run. */
  genTokens: number;
  /** Concurrent sequence counts to measure decode at (e.g. [1, 4, 16, 64]). */
  sequences: number[];
  /** Prompt length each sequence is prefilled with before its decode run (default promptTokens). */
  decodePromptTokens?: number;
  /**
   * llama.cpp flash attention, per phase (default on for both). Measured on this 2-core CPU build
   * (100M f16 model): FA on was ~10-30% faster for the 512-token prefill and for batched decode at
   * 16 sequences, and within noise at 1 and 4 sequences.
   */
  flashAttention?: boolean | { prefill: boolean; decode: boolean };
  /**
   * Timed repetitions; the best is reported (default 3). Prefill: the prompt is re-run on a cleared
   * sequence. Decode: `repeats` consecutive windows of `genTokens` steps (the context grows by
   * genTokens per window). Best-of because a 2-thread run on a shared machine is easily disturbed.
   */
  repeats?: number;
  /** PRNG seed for the random prompt ids (default 1234). */
  seed?: number;
  /** Called with progress lines (default: silent). */
  log?: (line: string) => void;
}

export interface LlamaCppResult {
  prefillTokensPerS: number;
  decode: { sequences: number; tokensPerS: number }[];
  /** Peak resident set size of this process so far (getrusage maxrss), bytes. */
  peakRssBytes?: number;
  /** Settings actually used, for the report. */
  settings: {
    threads: number;
    flashAttention: { prefill: boolean; decode: boolean };
    batchSize: number;
    kvCacheType: 'f16';
    build: string;
    llamaCppRelease: string;
  };
}

/** mulberry32: small seeded PRNG, uniform in [0, 1). */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function randomTokenIds(rand: () => number, n: number, vocab: number): number[] {
  const out = new Array<number>(n);
  for (let i = 0; i < n; i++) out[i] = Math.floor(rand() * vocab);
  return out;
}

let llamaPromise: Promise<Llama> | null = null;

/** The prebuilt-CPU Llama instance (created once per process; never downloads or builds). */
export async function getCpuLlama(): Promise<Llama> {
  llamaPromise ??= getLlama({
    gpu: false,
    build: 'never',
    skipDownload: true,
    usePrebuiltBinaries: true,
    progressLogs: false,
    logLevel: 'error' as never,
    maxThreads: 0, // no global cap: each context's `threads` is the exact count used
  }).then((llama) => {
    if (llama.gpu !== false) throw new Error(`node-llama-cpp loaded a GPU build (${String(llama.gpu)})`);
    if (llama.buildType !== 'prebuilt') throw new Error(`node-llama-cpp loaded a ${llama.buildType} build, expected prebuilt`);
    return llama;
  });
  return llamaPromise;
}

async function loadModel(ggufPath: string): Promise<LlamaModel> {
  const llama = await getCpuLlama();
  return llama.loadModel({ modelPath: ggufPath, gpuLayers: 0, useMmap: true, defaultContextFlashAttention: false });
}

const GREEDY = { generateNext: { token: true, options: { temperature: 0 } } } as const;

/**
 * Evaluate `tokens` on `seq` (appending to its state) and greedily sample the token after the last
 * one. Only the last position requests logits.
 */
async function evalAndSample(seq: LlamaContextSequence, tokens: number[]): Promise<number> {
  const input = tokens.map((t, i) => (i === tokens.length - 1 ? ([t as Token, GREEDY] as const) : (t as Token)));
  const res = await seq.controlledEvaluate(input as Parameters<LlamaContextSequence['controlledEvaluate']>[0]);
  const tok = res[tokens.length - 1]?.next.token;
  if (tok == null) throw new Error('llama.cpp returned no next token');
  return tok;
}

async function createContext(model: LlamaModel, o: { sequences: number; perSeqTokens: number; threads: number; flashAttention: boolean; batchSize: number }): Promise<LlamaContext> {
  return model.createContext({
    sequences: o.sequences,
    contextSize: o.perSeqTokens, // per sequence (node-llama-cpp sizes the KV cache as contextSize x sequences)
    batchSize: o.batchSize,
    threads: { ideal: o.threads, min: o.threads },
    flashAttention: o.flashAttention,
    ignoreMemorySafetyChecks: true,
    batching: { dispatchSchedule: 'nextCycle', itemPrioritizationStrategy: 'maximumParallelism' },
  });
}

/** Greedy continuation of `promptIds` for `n` tokens under llama.cpp. */
export async function greedyTokens(ggufPath: string, promptIds: number[], n: number, opts: { threads?: number; flashAttention?: boolean } = {}): Promise<number[]> {
  const model = await loadModel(ggufPath);
  try {
    const ctx = await createContext(model, {
      sequences: 1,
      perSeqTokens: promptIds.length + n + 1,
      threads: opts.threads ?? 2,
      flashAttention: opts.flashAttention ?? false,
      batchSize: Math.max(1, promptIds.length),
    });
    try {
      const seq = ctx.getSequence();
      const out: number[] = [];
      let next = await evalAndSample(seq, promptIds);
      out.push(next);
      while (out.length < n) {
        next = await evalAndSample(seq, [next]);
        out.push(next);
      }
      return out;
    } finally {
      await ctx.dispose();
    }
  } finally {
    await model.dispose();
  }
}

/**
 * Prefill throughput (one sequence, `promptTokens` random ids, time to the first greedy token)
 * and aggregate greedy decode throughput at each requested concurrency.
 */
export async function runLlamaCpp(ggufPath: string, opts: LlamaCppRunOptions): Promise<LlamaCppResult> {
  const log = opts.log ?? (() => {});
  const fa = opts.flashAttention ?? { prefill: true, decode: true };
  const flashAttention = typeof fa === 'boolean' ? { prefill: fa, decode: fa } : fa;
  const rand = mulberry32(opts.seed ?? 1234);
  const decodePrompt = opts.decodePromptTokens ?? opts.promptTokens;
  const repeats = Math.max(1, opts.repeats ?? 3);
  const llama = await getCpuLlama();
  const model = await loadModel(ggufPath);
  const V = vocabSize(model);
  const batchSize = Math.max(512, ...opts.sequences);
  try {
    // Prefill: warm up once on a short prompt, then time the full prompt on a fresh sequence.
    let prefillTokensPerS: number;
    {
      const ctx = await createContext(model, { sequences: 1, perSeqTokens: opts.promptTokens + 8, threads: opts.threads, flashAttention: flashAttention.prefill, batchSize });
      try {
        const seq = ctx.getSequence();
        await evalAndSample(seq, randomTokenIds(rand, Math.min(32, opts.promptTokens), V));
        const times: number[] = [];
        for (let r = 0; r < repeats; r++) {
          await seq.clearHistory();
          const prompt = randomTokenIds(rand, opts.promptTokens, V);
          const t0 = performance.now();
          await evalAndSample(seq, prompt);
          times.push((performance.now() - t0) / 1000);
        }
        const dt = Math.min(...times);
        prefillTokensPerS = opts.promptTokens / dt;
        log(`llama.cpp prefill ${opts.promptTokens} tokens: best ${dt.toFixed(3)} s of [${times.map((t) => t.toFixed(3)).join(', ')}], ${prefillTokensPerS.toFixed(1)} tok/s`);
      } finally {
        await ctx.dispose();
      }
    }

    const decode: { sequences: number; tokensPerS: number }[] = [];
    for (const n of opts.sequences) {
      const ctx = await createContext(model, { sequences: n, perSeqTokens: decodePrompt + (repeats + 1) * opts.genTokens + 8, threads: opts.threads, flashAttention: flashAttention.decode, batchSize });
      try {
        const seqs = Array.from({ length: n }, () => ctx.getSequence());
        // Prefill the sequences one after another (untimed): queued together, node-llama-cpp's
        // "maximumParallelism" strategy would slice every batch into N short pieces (slower).
        const tp = performance.now();
        let next: number[] = [];
        for (const s of seqs) next.push(await evalAndSample(s, randomTokenIds(rand, decodePrompt, V)));
        const prefillS = (performance.now() - tp) / 1000;
        // One untimed step to settle buffers for this batch shape.
        next = await Promise.all(seqs.map((s, i) => evalAndSample(s, [next[i]])));
        const times: number[] = [];
        for (let r = 0; r < repeats; r++) {
          const t0 = performance.now();
          for (let step = 0; step < opts.genTokens; step++) {
            next = await Promise.all(seqs.map((s, i) => evalAndSample(s, [next[i]])));
          }
          times.push((performance.now() - t0) / 1000);
        }
        const dt = Math.min(...times);
        const tokensPerS = (n * opts.genTokens) / dt;
        decode.push({ sequences: n, tokensPerS });
        log(
          `llama.cpp decode x${n}: ${opts.genTokens} steps after ${decodePrompt}-token prompts, best ${dt.toFixed(3)} s of ` +
            `[${times.map((t) => t.toFixed(3)).join(', ')}], ` +
            `${tokensPerS.toFixed(1)} tok/s aggregate (${(tokensPerS / n).toFixed(1)} per sequence; prefill of all took ${prefillS.toFixed(1)} s)`,
        );
      } finally {
        await ctx.dispose();
      }
    }
    return {
      prefillTokensPerS,
      decode,
      peakRssBytes: process.resourceUsage().maxRSS * 1024,
      settings: {
        threads: opts.threads,
        flashAttention,
        batchSize,
        kvCacheType: 'f16',
        build: `${llama.buildType} cpu`,
        llamaCppRelease: llama.llamaCppRelease.release,
      },
    };
  } finally {
    await model.dispose();
  }
}

function vocabSize(model: LlamaModel): number {
  const toks = model.fileInfo.metadata?.tokenizer?.ggml?.tokens;
  if (Array.isArray(toks) && toks.length > 0) return toks.length;
  throw new Error('cannot determine the vocabulary size of the model (tokenizer.ggml.tokens)');
}

// CLI: node dist/bench/llamacpp.js MODEL.gguf [--threads 2] [--prompt 512] [--gen 64] [--seqs 1,4,16,64] [--fa best|on|off]
//      [--decode-prompt N]
async function main(argv: string[]): Promise<void> {
  const { parseArgs } = await import('node:util');
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      threads: { type: 'string', default: '2' },
      prompt: { type: 'string', default: '512' },
      gen: { type: 'string', default: '64' },
      seqs: { type: 'string', default: '1,4,16,64' },
      fa: { type: 'string', default: 'best' },
      'decode-prompt': { type: 'string' },
      repeats: { type: 'string', default: '3' },
    },
  });
  if (positionals.length !== 1) throw new Error('usage: llamacpp.js MODEL.gguf [--threads N] [--prompt N] [--gen N] [--seqs 1,4,16,64] [--fa on|off]');
  const res = await runLlamaCpp(positionals[0], {
    threads: Number(values.threads),
    promptTokens: Number(values.prompt),
    genTokens: Number(values.gen),
    sequences: values.seqs.split(',').map(Number),
    decodePromptTokens: values['decode-prompt'] !== undefined ? Number(values['decode-prompt']) : undefined,
    flashAttention: values.fa === 'best' ? undefined : values.fa === 'on',
    repeats: Number(values.repeats),
    log: (l) => console.error(l),
  });
  console.log(JSON.stringify(res, null, 2));
}

if (process.argv[1] && import.meta.url === (await import('node:url')).pathToFileURL(process.argv[1]).href) {
  main(process.argv.slice(2)).catch((e: unknown) => {
    console.error(e);
    process.exit(1);
  });
}
