/**
 * A step's results come from the addon as typed arrays when no logits or top log-probabilities were
 * asked for, as an object per sequence otherwise: Engine.step gives the same StepResult either way
 * (tokens, log-probabilities, stop flags, entries without a sample, order).
 */
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { Engine } from '../src/engine/engine.js';
import { TinyModels } from './helpers/models.js';

const models = new TinyModels();
let engine: Engine;

beforeAll(async () => {
  const dir = await models.make('step-results', { arch: 'llama', dtype: 'f32', seed: 17, layers: 2, vocab: 300, maxPos: 128 });
  engine = await Engine.load(dir, { threads: 1, kvMemoryBytes: 16 << 20 });
});
afterAll(() => {
  engine.dispose();
  models.cleanup();
});

describe('step results', () => {
  test('packed (no logits asked) and per-object (logits asked) results agree field by field', async () => {
    const lease = { index: 0, release: () => {} };
    const prompts = [[5, 9, 11], [7, 7], [40, 41, 42, 43]];
    const run = async (logits: 'none' | 'last') => {
      // the third sequence's token is a stop token (and the second only prefills, no sample)
      const seqs = prompts.map((_, i) => engine.createSequence({ temperature: 0.8, seed: 3 + i, stopTokens: i === 2 ? [] : undefined, ignoreEos: true }));
      const first = await engine.step(lease, seqs.map((s, i) => ({ sequence: s, tokens: prompts[i]!, sample: i !== 1, logits })));
      const stopAt = first[2]!.token!;
      const seqs2 = prompts.map((_, i) => engine.createSequence({ temperature: 0.8, seed: 3 + i, stopTokens: i === 2 ? [stopAt] : undefined, ignoreEos: true }));
      const again = await engine.step(lease, seqs2.map((s, i) => ({ sequence: s, tokens: prompts[i]!, sample: i !== 1, logits })));
      for (const s of [...seqs, ...seqs2]) s.free();
      return again.map((r, i) => ({ same: r.sequence === seqs2[i], token: r.token, logprob: r.logprob, stop: r.stop, hasToken: 'token' in r }));
    };
    const packed = await run('none');
    const objects = await run('last');
    expect(packed).toEqual(objects);
    expect(packed.map((r) => r.same)).toEqual([true, true, true]);
    expect(packed[1]!.hasToken).toBe(false);
    expect(packed[2]!.stop).toBe(true);
    expect(packed[0]!.stop).toBe(false);
    expect(typeof packed[0]!.logprob).toBe('number');
  });
});
