/**
 * Single-sequence generation on the engine: prefill in chunks of the context's batch budget,
 * then decode one token per step until a stop token or the token limit.
 */
import { WeftError } from '../errors.js';
import type { Engine, SamplingOptions } from './engine.js';

export interface GenerateOptions extends SamplingOptions {
  maxTokens?: number;
  onToken?: (token: number) => void;
  signal?: AbortSignal;
}

export interface GenerateResult {
  tokens: number[];
  logprobs: { token: number; logprob: number; top: { token: number; logprob: number }[] }[];
  finishReason: 'stop' | 'length';
  timing: { prefillTokensPerS: number; decodeTokensPerS: number; prefillMs: number; decodeMs: number };
}

export async function generate(engine: Engine, prompt: number[], opts: GenerateOptions = {}): Promise<GenerateResult> {
  const maxTokens = opts.maxTokens ?? 64;
  if (!Number.isInteger(maxTokens) || maxTokens < 1) throw new WeftError('WEFT_BAD_ARGUMENT', `maxTokens must be a positive integer (got ${maxTokens})`);
  if (prompt.length === 0) throw new WeftError('WEFT_BAD_ARGUMENT', 'the prompt is empty');
  const { maxBatchTokens: budget, maxContext } = engine.stats();
  const seq = engine.createSequence(opts);
  try {
    const result: GenerateResult = { tokens: [], logprobs: [], finishReason: 'length', timing: { prefillTokensPerS: 0, decodeTokensPerS: 0, prefillMs: 0, decodeMs: 0 } };
    const t0 = performance.now();
    let last;
    for (let i = 0; i < prompt.length; i += budget) {
      const chunk = prompt.slice(i, i + budget);
      [last] = await engine.run([{ sequence: seq, tokens: chunk, sample: i + budget >= prompt.length }], opts.signal);
    }
    const t1 = performance.now();
    let r = last!;
    for (;;) {
      if (r.stop) {
        result.finishReason = 'stop';
        break;
      }
      result.tokens.push(r.token!);
      if (opts.logprobs) result.logprobs.push({ token: r.token!, logprob: r.logprob!, top: r.top ?? [] });
      opts.onToken?.(r.token!);
      // the sequence holds the prompt and every generated token but the last (not fed yet): stop
      // when feeding that one would pass the context limit
      if (result.tokens.length >= maxTokens || prompt.length + result.tokens.length - 1 >= maxContext) break;
      [r] = await engine.run([{ sequence: seq, tokens: [r.token!], sample: true }], opts.signal);
    }
    const t2 = performance.now();
    const decodeSteps = Math.max(0, result.tokens.length - 1 + (result.finishReason === 'stop' ? 1 : 0));
    result.timing = {
      prefillMs: t1 - t0,
      decodeMs: t2 - t1,
      prefillTokensPerS: prompt.length / ((t1 - t0) / 1000),
      decodeTokensPerS: decodeSteps > 0 ? decodeSteps / ((t2 - t1) / 1000) : 0,
    };
    return result;
  } finally {
    seq.free();
  }
}
