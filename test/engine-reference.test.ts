/**
 * The engine's logits against the independent float64 reference (test/reference/forward.ts):
 * prefill, decode, chunked prefill and batches that mix sequences, for every supported
 * architecture variant. Tolerance: max |diff| / max |ref| over a row ≤ 1e-4 for f32 weights;
 * ≤ 2e-2 for f16/bf16 weights (f16 KV and f32 activations against a float64 pass over the same
 * rounded weights).
 */
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { Engine } from '../src/engine/engine.js';
import { ReferenceModel } from './reference/forward.js';
import { TinyModels, maxRelError, row } from './helpers/models.js';
import type { TinyModelOptions } from '../scripts/make-tiny-model.js';

const models = new TinyModels();
afterAll(() => models.cleanup());

const VARIANTS: [string, TinyModelOptions, number][] = [
  ['llama-f32', { arch: 'llama', dtype: 'f32', seed: 11 }, 1e-4],
  ['qwen2-f32-bias', { arch: 'qwen2', dtype: 'f32', seed: 12 }, 1e-4],
  ['mistral-f32', { arch: 'mistral', dtype: 'f32', seed: 13 }, 1e-4],
  ['llama3-rope-scaling', { arch: 'llama', dtype: 'f32', seed: 14, ropeScaling: 'llama3', maxPos: 256, headDim: 32, heads: 2, kvHeads: 1 }, 1e-4],
  ['llama-tied-sharded', { arch: 'llama', dtype: 'f32', seed: 15, tie: true, shards: 2 }, 1e-4],
  ['llama-f16', { arch: 'llama', dtype: 'f16', seed: 16 }, 2e-2],
  ['llama-bf16', { arch: 'llama', dtype: 'bf16', seed: 17 }, 2e-2],
];

const PROMPT = [3, 17, 250, 9, 77, 411, 5, 64, 128, 300, 2, 41];

describe.each(VARIANTS)('%s', (name, opts, tol) => {
  let engine: Engine;
  let ref: ReferenceModel;
  let vocab: number;
  beforeAll(async () => {
    const dir = await models.make(name, opts);
    engine = await Engine.load(dir, { threads: 2, contexts: 2 });
    ref = await ReferenceModel.load(dir);
    vocab = engine.config.vocabSize;
  });
  afterAll(() => engine.dispose());

  test('prefill logits match the reference at every position', async () => {
    const seq = engine.createSequence();
    const [r] = await engine.run([{ sequence: seq, tokens: PROMPT, logits: 'all' }]);
    const want = ref.forward(PROMPT);
    for (let t = 0; t < PROMPT.length; t++) expect(maxRelError(row(r!.logits!, vocab, t), want[t]!)).toBeLessThan(tol);
    seq.free();
  });

  test('decode steps on cached KV match the reference', async () => {
    const seq = engine.createSequence();
    const cache = ref.newCache();
    ref.forward(PROMPT.slice(0, 8), 0, cache);
    await engine.run([{ sequence: seq, tokens: PROMPT.slice(0, 8) }]);
    for (let t = 8; t < PROMPT.length; t++) {
      const [r] = await engine.run([{ sequence: seq, tokens: [PROMPT[t]!], logits: 'last' }]);
      const want = ref.forward([PROMPT[t]!], t, cache);
      expect(maxRelError(r!.logits!, want[0]!)).toBeLessThan(tol);
    }
    expect(seq.numTokens).toBe(PROMPT.length);
    seq.free();
  });

  test('chunked prefill gives bit-identical logits to one-shot prefill', async () => {
    const whole = engine.createSequence();
    const chunked = engine.createSequence();
    const [full] = await engine.run([{ sequence: whole, tokens: PROMPT, logits: 'all' }]);
    const parts: Float32Array[] = [];
    for (const [a, b] of [[0, 5], [5, 6], [6, 12]] as const) {
      const [r] = await engine.run([{ sequence: chunked, tokens: PROMPT.slice(a, b), logits: 'all' }]);
      parts.push(r!.logits!);
    }
    const joined = new Float32Array(full!.logits!.length);
    let off = 0;
    for (const p of parts) {
      joined.set(p, off);
      off += p.length;
    }
    expect(joined).toEqual(full!.logits);
    whole.free();
    chunked.free();
  });

  test('a batch mixing prefill chunks and decode tokens matches the reference per sequence', async () => {
    const a = engine.createSequence();
    const b = engine.createSequence();
    const c = engine.createSequence();
    await engine.run([{ sequence: a, tokens: PROMPT.slice(0, 6) }]);
    const promptB = PROMPT.slice(2, 9);
    const [ra, rb, rc] = await engine.run([
      { sequence: a, tokens: [PROMPT[6]!], logits: 'last' }, // decode
      { sequence: b, tokens: promptB, logits: 'all' }, // prefill
      { sequence: c, tokens: [PROMPT[11]!, PROMPT[0]!], logits: 'last' }, // short prefill
    ]);
    expect(maxRelError(ra!.logits!, ref.forward(PROMPT.slice(0, 7))[6]!)).toBeLessThan(tol);
    const wantB = ref.forward(promptB);
    for (let t = 0; t < promptB.length; t++) expect(maxRelError(row(rb!.logits!, vocab, t), wantB[t]!)).toBeLessThan(tol);
    expect(maxRelError(rc!.logits!, ref.forward([PROMPT[11]!, PROMPT[0]!])[1]!)).toBeLessThan(tol);
    for (const s of [a, b, c]) s.free();
  });
});
