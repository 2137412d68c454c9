/**
 * The engine throughput measurement behind `weft bench` and `npm run bench:engine`: for each
 * concurrency n, prefill n random prompts (packed into steps under the token budget), then
 * decode genTokens steps with all n sequences in every step.
 */
import type { ModelConfig } from './config.js';
import type { Engine } from './engine.js';

export interface BenchOptions {
  sequences: number[];
  promptTokens: number;
  genTokens: number;
  seed?: number;
}

export interface BenchResult {
  sequences: number;
  prefill_tokens_per_s: number;
  decode_tokens_per_s: number;
  /** mean decode step time */
  decode_step_ms: number;
}

/** KV bytes a run needs (pages rounded up, plus one spare page per sequence). */
export function kvBytesFor(config: ModelConfig, kvDtypeBytes: number, numSeqs: number, tokensPerSeq: number, pageTokens = 16): number {
  const perToken = 2 * config.numLayers * config.numKvHeads * config.headDim * kvDtypeBytes;
  const pages = numSeqs * (Math.ceil(tokensPerSeq / pageTokens) + 1);
  return pages * pageTokens * perToken;
}

function randomTokens(n: number, vocab: number, seed: number): number[] {
  let s = seed >>> 0 || 1;
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    out.push((s >>> 0) % vocab);
  }
  return out;
}

export async function benchEngine(engine: Engine, opts: BenchOptions): Promise<BenchResult[]> {
  const results: BenchResult[] = [];
  const budget = engine.stats().maxBatchTokens;
  const vocab = engine.config.vocabSize;
  for (const n of opts.sequences) {
    const seqs = Array.from({ length: n }, () => engine.createSequence({ ignoreEos: true }));
    const prompts = seqs.map((_, i) => randomTokens(opts.promptTokens, vocab, (opts.seed ?? 7) * 1000 + i + 1));
    try {
      // prefill: pack (sequence, chunk) pieces into steps of at most `budget` tokens
      const t0 = performance.now();
      const pending = seqs.map((s, i) => ({ s, toks: prompts[i]!, at: 0 }));
      const next = new Array<number>(n);
      while (pending.some((p) => p.at < p.toks.length)) {
        const entries = [];
        let room = budget;
        for (const p of pending) {
          if (p.at >= p.toks.length || room === 0) continue;
          const take = Math.min(room, p.toks.length - p.at);
          const last = p.at + take >= p.toks.length;
          entries.push({ sequence: p.s, tokens: p.toks.slice(p.at, p.at + take), sample: last });
          p.at += take;
          room -= take;
        }
        const rs = await engine.run(entries);
        rs.forEach((r) => {
          if (r.token !== undefined) next[seqs.indexOf(r.sequence)] = r.token;
        });
      }
      const t1 = performance.now();
      // decode: every sequence advances one token per step
      for (let step = 0; step < opts.genTokens; step++) {
        const rs = await engine.run(seqs.map((s, i) => ({ sequence: s, tokens: [next[i]!], sample: true })));
        rs.forEach((r, i) => (next[i] = r.token!));
      }
      const t2 = performance.now();
      results.push({
        sequences: n,
        prefill_tokens_per_s: (n * opts.promptTokens) / ((t1 - t0) / 1000),
        decode_tokens_per_s: (n * opts.genTokens) / ((t2 - t1) / 1000),
        decode_step_ms: (t2 - t1) / opts.genTokens,
      });
    } finally {
      seqs.forEach((s) => s.free());
    }
  }
  return results;
}
