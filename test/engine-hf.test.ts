/**
 * The engine against Hugging Face transformers (fixtures written on the GPU machine by
 * scripts/gpu/hf_fixtures.py: random tiny models saved with save_pretrained, and their logits).
 * f32 models: max |diff| / max |ref| ≤ 1e-4 per position, greedy tokens equal. The bf16 model:
 * against transformers' float64 run over the same bf16 weights, ≤ 2e-2 (f16 KV, f32 math).
 * A fixture's "max_context" (phi3) is the engine context each input runs with: weft picks
 * LongRoPE's factors by its context (docs/models.md).
 *
 * The architectures beyond Llama also keep the engine's invariance: a sequence's logits are the
 * same bits whether prefilled at once or in chunks (across window edges), alone or batched, on one
 * thread or two.
 */
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, test } from 'vitest';
import { loadModelConfig, nativeConfig, type ModelConfig } from '../src/engine/config.js';
import { readTensorBytes } from '../src/engine/dtype.js';
import { Engine } from '../src/engine/engine.js';
import { native } from '../src/engine/native.js';
import { readSafetensorsIndex, writeSafetensors } from '../src/engine/safetensors.js';
import { resolveWeights, tensorSpecs } from '../src/engine/weights.js';
import { argmax, maxRelError, row } from './helpers/models.js';

const ROOT = join(import.meta.dirname, 'fixtures', 'hf');

interface Fixture {
  inputs: number[][];
  logits: number[][][];
  logits_f64?: number[][][];
  greedy: number[][];
  greedy_f64?: number[][];
  weights_dtype: string;
  max_context?: number[];
}

const load = (name: string): Fixture => JSON.parse(readFileSync(join(ROOT, name, 'logits.json'), 'utf8')) as Fixture;

const NEW_ARCHS = ['qwen3', 'gemma2', 'gemma3', 'phi3', 'mistral_sw', 'qwen2_sw'];
const maxAbsDiff: Record<string, number> = {};
afterAll(() => console.info('max |logit - transformers|:', maxAbsDiff));

describe.each(['llama', 'qwen2', 'llama3_rope', 'llama_bf16', ...NEW_ARCHS])('%s (transformers fixture)', (name) => {
  const dir = join(ROOT, name);
  const fx = load(name);
  const want = fx.logits_f64 ?? fx.logits;
  const greedy = fx.greedy_f64 ?? fx.greedy;
  const tol = name === 'llama_bf16' ? 2e-2 : 1e-4;

  test('prefill logits and greedy continuation match', async () => {
    let worst = 0;
    for (let s = 0; s < fx.inputs.length; s++) {
      const engine = await Engine.load(dir, { threads: 2, maxContext: fx.max_context?.[s] });
      const vocab = engine.config.vocabSize;
      try {
        const seq = engine.createSequence({ ignoreEos: true });
        const [r] = await engine.run([{ sequence: seq, tokens: fx.inputs[s]!, logits: 'all' }]);
        for (let p = 0; p < fx.inputs[s]!.length; p++) {
          const got = row(r!.logits!, vocab, p);
          expect(maxRelError(got, want[s]![p]!), `input ${s} position ${p}`).toBeLessThan(tol);
          for (let v = 0; v < vocab; v++) worst = Math.max(worst, Math.abs(got[v]! - want[s]![p]![v]!));
        }
        // greedy continuation, one decode step at a time on the cached KV
        const out: number[] = [argmax(row(r!.logits!, vocab, fx.inputs[s]!.length - 1))];
        while (out.length < greedy[s]!.length) {
          const [d] = await engine.run([{ sequence: seq, tokens: [out.at(-1)!], sample: true }]);
          out.push(d!.token!);
        }
        expect(out).toEqual(greedy[s]);
        seq.free();
      } finally {
        engine.dispose();
      }
    }
    maxAbsDiff[name] = worst;
  });
});

describe.each(NEW_ARCHS)('%s: invariance', (name) => {
  const dir = join(ROOT, name);
  const fx = load(name);
  const prompt = fx.inputs.reduce((a, b) => (b.length > a.length ? b : a));
  const other = fx.inputs.find((x) => x !== prompt) ?? fx.inputs[0]!;

  async function prefill(engine: Engine, chunks: number[], batchWith?: number[]): Promise<Float32Array> {
    const seq = engine.createSequence();
    const mate = batchWith ? engine.createSequence() : null;
    const parts: Float32Array[] = [];
    let at = 0;
    for (const n of chunks) {
      const entries = [{ sequence: seq, tokens: prompt.slice(at, at + n), logits: 'all' as const }];
      if (mate) entries.push({ sequence: mate, tokens: batchWith!.slice(at, at + n), logits: 'all' as const });
      const [r] = await engine.run(entries);
      parts.push(r!.logits!);
      at += n;
    }
    seq.free();
    mate?.free();
    const joined = new Float32Array(parts.reduce((a, p) => a + p.length, 0));
    let off = 0;
    for (const p of parts) {
      joined.set(p, off);
      off += p.length;
    }
    return joined;
  }

  test('chunked, batched and single-threaded prefill give the same bits', async () => {
    const two = await Engine.load(dir, { threads: 2, contexts: 2 });
    const one = await Engine.load(dir, { threads: 1 });
    try {
      const whole = await prefill(two, [prompt.length]);
      // chunks of 5, single decode-like steps, then the rest (crossing the windows' edges)
      const chunks = [5, 1, 1, 4, 1, prompt.length - 12].filter((n) => n > 0);
      expect(await prefill(two, chunks)).toEqual(whole);
      expect(await prefill(two, [prompt.length], other)).toEqual(whole);
      expect(await prefill(one, [prompt.length])).toEqual(whole);
    } finally {
      two.dispose();
      one.dispose();
    }
  });
});

/** A fixture's directory copied, with its tensors passed through `edit` and its config.json through `config`. */
async function variant(
  name: string,
  edit: (name: string, shape: number[], data: Uint8Array) => { name: string; data: Uint8Array },
  config: (c: Record<string, unknown>) => Record<string, unknown>,
  extra: { name: string; dtype: string; shape: number[]; data: Uint8Array }[] = [],
): Promise<string> {
  const dir = mkdtempSync(join(tmpdir(), `weft-hf-${name}-`));
  cpSync(join(ROOT, name), dir, { recursive: true });
  const tensors = await readSafetensorsIndex(dir);
  const out = await Promise.all([...tensors.values()].map(async (t) => ({ dtype: t.dtype, shape: t.shape, ...edit(t.name, t.shape, await readTensorBytes(t)) })));
  await writeSafetensors(join(dir, 'model.safetensors'), [...out, ...extra]);
  writeFileSync(join(dir, 'config.json'), JSON.stringify(config(JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')))));
  return dir;
}

/** All-position logits straight from the native engine, for a config patched past what config.json can say. */
async function nativeLogits(dir: string, patch: Partial<ModelConfig>, tokens: number[], backend: 'cpu' | 'cuda' = 'cpu'): Promise<Float32Array> {
  const config = { ...(await loadModelConfig(dir)), ...patch };
  const { files, specs } = tensorSpecs(resolveWeights(config, await readSafetensorsIndex(dir)));
  const engine = new (native().NativeEngine)({
    config: nativeConfig(config),
    files,
    tensors: specs,
    options: {
      contexts: 1, threads: 2, maxBatchTokens: 64, maxBatchSequences: 4, maxLogitRows: 64, maxContext: 0,
      kvMemoryBytes: 16 * 2 ** 20, kvPageTokens: 16, kvDtype: 'F32', backend, cudaDevice: 0,
    },
  });
  try {
    await engine.load();
    const [r] = await engine.step(0, [{ seq: engine.createSequence(), tokens, logits: 2, sample: false }]);
    return r!.logits!;
  } finally {
    engine.dispose();
  }
}

describe('checkpoint variants', () => {
  test('ropeInterleaved: Q/K rows permuted as llama.cpp stores them give the same logits', async () => {
    const fx = load('llama');
    const cfg = await loadModelConfig(join(ROOT, 'llama'));
    const D = cfg.headDim;
    // llama.cpp's permute: within each head, row (i, half a) moves to 2i + a
    const permute = (data: Uint8Array, rows: number): Uint8Array => {
      const rowBytes = data.byteLength / rows;
      const out = new Uint8Array(data.byteLength);
      for (let h = 0; h < rows / D; h++) {
        for (let a = 0; a < 2; a++) {
          for (let i = 0; i < D / 2; i++) {
            const from = h * D + a * (D / 2) + i;
            out.set(data.subarray(from * rowBytes, (from + 1) * rowBytes), (h * D + 2 * i + a) * rowBytes);
          }
        }
      }
      return out;
    };
    const dir = await variant(
      'llama',
      (name, shape, data) => ({ name, data: /\.(q|k)_proj\.weight$/.test(name) ? permute(data, shape[0]!) : data }),
      (c) => c,
    );
    try {
      const interleaved = await nativeLogits(dir, { ropeInterleaved: true }, fx.inputs[0]!);
      const plain = await nativeLogits(dir, {}, fx.inputs[0]!);
      let worst = 0;
      let plainWorst = 0;
      for (let p = 0; p < fx.inputs[0]!.length; p++) {
        worst = Math.max(worst, maxRelError(row(interleaved, cfg.vocabSize, p), fx.logits[0]![p]!));
        plainWorst = Math.max(plainWorst, maxRelError(row(plain, cfg.vocabSize, p), fx.logits[0]![p]!));
      }
      expect(worst).toBeLessThan(1e-4);
      expect(plainWorst).toBeGreaterThan(1e-2); // the permutation matters
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("Gemma3ForConditionalGeneration: the text model from text_config and language_model.* tensors", async () => {
    const fx = load('gemma3');
    const dir = await variant(
      'gemma3',
      (name, _shape, data) => ({ name: name.replace(/^model\./, 'language_model.model.'), data }),
      (c) => {
        const text: Record<string, unknown> = { ...c, model_type: 'gemma3_text' };
        for (const k of ['architectures', 'eos_token_id', 'bos_token_id', 'tie_word_embeddings']) delete text[k];
        return {
          architectures: ['Gemma3ForConditionalGeneration'],
          model_type: 'gemma3',
          eos_token_id: c.eos_token_id,
          text_config: text,
          vision_config: { model_type: 'siglip_vision_model', hidden_size: 8 },
        };
      },
      [{ name: 'vision_tower.vision_model.post_layernorm.weight', dtype: 'F32', shape: [2], data: new Uint8Array(8) }],
    );
    try {
      const engine = await Engine.load(dir, { threads: 2 });
      try {
        expect(engine.config.architecture).toBe('gemma3');
        expect(engine.config.eosTokenIds).toEqual([319]);
        const seq = engine.createSequence();
        const [r] = await engine.run([{ sequence: seq, tokens: fx.inputs[0]!, logits: 'all' }]);
        for (let p = 0; p < fx.inputs[0]!.length; p++) {
          expect(maxRelError(row(r!.logits!, engine.config.vocabSize, p), fx.logits[0]![p]!)).toBeLessThan(1e-4);
        }
      } finally {
        engine.dispose();
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('the CUDA backend refuses what it does not implement, naming it', async () => {
    const fx = load('gemma3');
    await expect(nativeLogits(join(ROOT, 'gemma3'), {}, fx.inputs[0]!, 'cuda')).rejects.toMatchObject({
      code: 'WEFT_UNSUPPORTED_ARCH',
      message: expect.stringContaining('per-head q/k norms'),
    });
  });
});
