/**
 * The engine against Hugging Face transformers (fixtures written on the GPU machine by
 * scripts/gpu/hf_fixtures.py: random tiny models saved with save_pretrained, and their logits).
 * f32 models: max |diff| / max |ref| ≤ 1e-4 per position, greedy tokens equal. The bf16 model:
 * against transformers' float64 run over the same bf16 weights, ≤ 2e-2 (f16 KV, f32 math).
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, test } from 'vitest';
import { Engine } from '../src/engine/engine.js';
import { argmax, maxRelError, row } from './helpers/models.js';

const ROOT = join(import.meta.dirname, 'fixtures', 'hf');

interface Fixture {
  inputs: number[][];
  logits: number[][][];
  logits_f64?: number[][][];
  greedy: number[][];
  greedy_f64?: number[][];
  weights_dtype: string;
}

describe.each(['llama', 'qwen2', 'llama3_rope', 'llama_bf16'])('%s (transformers fixture)', (name) => {
  const dir = join(ROOT, name);
  const fx = JSON.parse(readFileSync(join(dir, 'logits.json'), 'utf8')) as Fixture;
  const want = fx.logits_f64 ?? fx.logits;
  const greedy = fx.greedy_f64 ?? fx.greedy;
  const tol = name === 'llama_bf16' ? 2e-2 : 1e-4;

  test('prefill logits and greedy continuation match', async () => {
    const engine = await Engine.load(dir, { threads: 2 });
    const vocab = engine.config.vocabSize;
    try {
      for (let s = 0; s < fx.inputs.length; s++) {
        const seq = engine.createSequence({ ignoreEos: true });
        const [r] = await engine.run([{ sequence: seq, tokens: fx.inputs[s]!, logits: 'all' }]);
        for (let p = 0; p < fx.inputs[s]!.length; p++) {
          expect(maxRelError(row(r!.logits!, vocab, p), want[s]![p]!), `input ${s} position ${p}`).toBeLessThan(tol);
        }
        // greedy continuation, one decode step at a time on the cached KV
        const out: number[] = [argmax(row(r!.logits!, vocab, fx.inputs[s]!.length - 1))];
        while (out.length < greedy[s]!.length) {
          const [d] = await engine.run([{ sequence: seq, tokens: [out.at(-1)!], sample: true }]);
          out.push(d!.token!);
        }
        expect(out).toEqual(greedy[s]);
        seq.free();
      }
    } finally {
      engine.dispose();
    }
  });
});
