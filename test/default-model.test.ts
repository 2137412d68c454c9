/**
 * The shipped default model (models/default, trained by training/train.py): the engine matches
 * the logits PyTorch computed at export, and greedy decoding of a fixed prompt is a fixed string.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, test } from 'vitest';
import { Engine } from '../src/engine/engine.js';
import { generate } from '../src/engine/generate.js';
import { maxRelError, row } from './helpers/models.js';

const DIR = join(import.meta.dirname, '..', 'models', 'default');
const ref = JSON.parse(readFileSync(join(DIR, 'reference_logits.json'), 'utf8')) as {
  passage: { text: string; ids: number[]; last_positions: number[]; last_logits: number[][]; top5_ids: number[][] };
  greedy: { prompt: string; prompt_ids: number[]; new_tokens: number; ids: number[]; text: string };
};
let engine: Engine;

beforeAll(async () => {
  engine = await Engine.load(DIR, { threads: 2 });
});
afterAll(() => engine.dispose());

test('the tokenizer reproduces the ids PyTorch used', () => {
  expect(engine.tokenizer!.encode(ref.passage.text, { addSpecialTokens: false })).toEqual(ref.passage.ids);
  expect(engine.tokenizer!.encode(ref.greedy.prompt, { addSpecialTokens: false })).toEqual(ref.greedy.prompt_ids);
});

test('logits on a validation passage match PyTorch (≤ 1e-4 relative) and the top-5 agree', async () => {
  const seq = engine.createSequence();
  const [r] = await engine.run([{ sequence: seq, tokens: ref.passage.ids, logits: 'all' }]);
  seq.free();
  const vocab = engine.config.vocabSize;
  ref.passage.last_positions.forEach((p, i) => expect(maxRelError(row(r!.logits!, vocab, p), ref.passage.last_logits[i]!)).toBeLessThan(1e-4));
  ref.passage.top5_ids.forEach((ids, p) => {
    const logits = Array.from(row(r!.logits!, vocab, p));
    const top = logits.map((v, id) => [v, id] as const).sort((a, b) => b[0] - a[0]).slice(0, 5).map(([, id]) => id);
    expect(top, `position ${p}`).toEqual(ids);
  });
});

test('greedy continuation of a fixed prompt is a fixed string', async () => {
  const out = await generate(engine, ref.greedy.prompt_ids, { maxTokens: ref.greedy.new_tokens, ignoreEos: true });
  expect(out.tokens).toEqual(ref.greedy.ids);
  expect(engine.tokenizer!.decode(out.tokens)).toBe(' of the creation of the creation of the creation of the creation of the creation of the creation of the creation of the creation');
});
