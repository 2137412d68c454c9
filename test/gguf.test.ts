/**
 * bench/gguf.ts: tiny random Llama/Mistral checkpoints (scripts/make-tiny-model.ts) exported to
 * GGUF must (1) parse back with the values written (our reader and node-llama-cpp's independent
 * one), with tensor bytes kept and Q/K rows permuted to llama.cpp's interleaved RoPE layout, and
 * (2) generate under llama.cpp (node-llama-cpp's prebuilt CPU binary, never downloaded or built)
 * the same greedy tokens as the float64 reference forward pass (test/reference/forward.ts).
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readGgufFileInfo } from 'node-llama-cpp';
import { exportGguf, f16BitsToF32, f32ToF16Bits, GGUF_MAGIC, readGgufHeader } from '../bench/gguf.js';
import { greedyTokens } from '../bench/llamacpp.js';
import { makeTinyModel, type TinyModelOptions } from '../scripts/make-tiny-model.js';
import { readTensorF64 } from '../src/engine/dtype.js';
import { readSafetensorsIndex } from '../src/engine/safetensors.js';
import { ReferenceModel } from './reference/forward.js';

/** Greedy tokens of the float64 reference, with the smallest top-1/top-2 logit gap met on the way. */
function refGreedy(m: ReferenceModel, prompt: number[], n: number): { tokens: number[]; minMargin: number } {
  const cache = m.newCache();
  let logits = m.forward(prompt, 0, cache);
  const tokens: number[] = [];
  let minMargin = Infinity;
  while (tokens.length < n) {
    const last = logits[logits.length - 1];
    let a = 0;
    for (let i = 1; i < last.length; i++) if (last[i] > last[a]) a = i;
    let second = -Infinity;
    for (let i = 0; i < last.length; i++) if (i !== a && last[i] > second) second = last[i];
    tokens.push(a);
    minMargin = Math.min(minMargin, last[a] - second);
    if (tokens.length < n) logits = m.forward([a], undefined, cache);
  }
  return { tokens, minMargin };
}

let root = '';
beforeAll(async () => {
  root = await mkdtemp(path.join(os.tmpdir(), 'weft-gguf-'));
});
afterAll(async () => {
  if (root) await rm(root, { recursive: true, force: true });
});

const PROMPT = [5, 17, 42, 99, 150, 7, 260, 31, 8, 200, 64, 3, 400, 77, 301, 12];
const GEN = 16;

describe('exportGguf', () => {
  const variants: { name: string; gen: TinyModelOptions; out: 'f16' | 'f32'; dropTokenizer?: boolean }[] = [
    { name: 'llama f16 -> f16 GGUF', gen: { arch: 'llama', dtype: 'f16', seed: 21, initScale: 3 }, out: 'f16' },
    {
      name: 'llama bf16, tied, llama3 rope scaling, 2 shards -> f16 GGUF',
      gen: { arch: 'llama', dtype: 'bf16', seed: 22, initScale: 3, tie: true, ropeScaling: 'llama3', shards: 2, ropeTheta: 500000 },
      out: 'f16',
    },
    { name: 'mistral f32 -> f32 GGUF, no tokenizer.json', gen: { arch: 'mistral', dtype: 'f32', seed: 23, initScale: 3, heads: 8, kvHeads: 2 }, out: 'f32', dropTokenizer: true },
  ];
  for (const variant of variants) {
    it(`${variant.name}: header round trip; llama.cpp greedy tokens = float64 reference`, async () => {
      const dir = path.join(root, variant.name.replace(/[^a-z0-9]+/gi, '_'));
      const gen = await makeTinyModel(dir, variant.gen);
      if (variant.dropTokenizer) await rm(path.join(dir, 'tokenizer.json'));
      const ref = await ReferenceModel.load(dir);
      const c = ref.config;
      const tied = c.tieWordEmbeddings;
      const gguf = `${dir}.gguf`;
      const res = await exportGguf(dir, gguf, { dtype: variant.out });
      const nTensors = 2 + 9 * c.numLayers + (tied ? 0 : 1) + (c.ropeScaling ? 1 : 0);
      expect(res.tensorCount).toBe(nTensors);
      expect(gen.files.length).toBeGreaterThan(0);

      // --- header round trip (our reader) ---
      const raw = await readFile(gguf);
      expect(raw.readUInt32LE(0)).toBe(GGUF_MAGIC);
      expect(raw.subarray(0, 4).toString('latin1')).toBe('GGUF');
      expect(raw.length).toBe(res.bytes);
      const h = await readGgufHeader(gguf);
      expect(h.version).toBe(3);
      expect(h.tensorCount).toBe(nTensors);
      const md = h.metadata;
      const D = c.headDim;
      expect(md.get('general.architecture')).toBe('llama');
      expect(md.get('general.alignment')).toBe(32);
      expect(md.get('general.file_type')).toBe(variant.out === 'f16' ? 1 : 0);
      expect(md.get('llama.embedding_length')).toBe(c.hiddenSize);
      expect(md.get('llama.block_count')).toBe(c.numLayers);
      expect(md.get('llama.feed_forward_length')).toBe(c.intermediateSize);
      expect(md.get('llama.rope.dimension_count')).toBe(D);
      expect(md.get('llama.attention.head_count')).toBe(c.numHeads);
      expect(md.get('llama.attention.head_count_kv')).toBe(c.numKvHeads);
      expect(md.get('llama.context_length')).toBe(c.maxPositionEmbeddings);
      expect(md.get('llama.vocab_size')).toBe(c.vocabSize);
      expect(md.get('llama.attention.layer_norm_rms_epsilon')).toBe(Math.fround(c.rmsNormEps));
      expect(md.get('llama.rope.freq_base')).toBe(c.ropeTheta);
      expect(md.get('tokenizer.ggml.model')).toBe('gpt2');
      expect(md.get('tokenizer.ggml.pre')).toBe('gpt-2');
      const toks = md.get('tokenizer.ggml.tokens') as string[];
      const types = md.get('tokenizer.ggml.token_type') as number[];
      expect(toks).toHaveLength(c.vocabSize);
      expect(types).toHaveLength(c.vocabSize);
      expect(md.get('tokenizer.ggml.eos_token_id')).toBe(c.eosTokenIds[0]);
      expect(md.get('tokenizer.ggml.bos_token_id')).toBe(c.bosTokenId);
      if (!variant.dropTokenizer) {
        const tj = JSON.parse(await readFile(path.join(dir, 'tokenizer.json'), 'utf8')) as {
          model: { vocab: Record<string, number>; merges: (string | string[])[] };
        };
        for (const [t, id] of Object.entries(tj.model.vocab)) expect(toks[id]).toBe(t);
        const merges = md.get('tokenizer.ggml.merges') as string[];
        expect(merges).toEqual(tj.model.merges.map((m) => (typeof m === 'string' ? m : m.join(' '))));
        expect(toks[c.eosTokenIds[0]]).toBe('<|endoftext|>');
        expect(types[c.eosTokenIds[0]]).toBe(3); // CONTROL
      }
      expect(toks.indexOf('\u0120')).toBeGreaterThanOrEqual(0); // byte-level space 'Ġ' is in the vocab

      const byName = new Map(h.tensors.map((t) => [t.name, t]));
      expect(byName.get('token_embd.weight')?.ne).toEqual([c.hiddenSize, c.vocabSize]);
      expect(byName.has('output.weight')).toBe(!tied);
      expect(byName.get('blk.1.attn_k.weight')?.ne).toEqual([c.hiddenSize, c.numKvHeads * D]);
      expect(byName.get('blk.0.attn_output.weight')?.ne).toEqual([c.numHeads * D, c.hiddenSize]);
      expect(byName.get('blk.0.ffn_down.weight')?.ne).toEqual([c.intermediateSize, c.hiddenSize]);
      expect(byName.get('blk.0.attn_norm.weight')?.type).toBe(0); // norms stay f32
      expect(byName.get('blk.0.attn_q.weight')?.type).toBe(variant.out === 'f16' ? 1 : 0);
      if (c.ropeScaling) expect(byName.get('rope_freqs.weight')?.ne).toEqual([D / 2]);
      for (const t of h.tensors) expect(t.offset % 32).toBe(0);
      expect(h.dataOffset % 32).toBe(0);

      // Tensor bytes. Q/K: interleaved row h*D + 2j + s holds HF row h*D + s*D/2 + j.
      const st = await readSafetensorsIndex(dir);
      const elt = variant.out === 'f16' ? 2 : 4;
      const readRow = (name: string, row: number, cols: number): number[] => {
        const t = byName.get(name)!;
        const start = h.dataOffset + t.offset + row * cols * elt;
        const out: number[] = [];
        for (let i = 0; i < cols; i++) out.push(elt === 2 ? f16BitsToF32(raw.readUInt16LE(start + 2 * i)) : raw.readFloatLE(start + 4 * i));
        return out;
      };
      const H = c.hiddenSize;
      const hfRows = async (name: string) => {
        const data = await readTensorF64(st.get(name)!);
        return (r: number) => Array.from(data.subarray(r * H, (r + 1) * H), (x) => (elt === 2 ? f16BitsToF32(f32ToF16Bits(x)) : x));
      };
      const q = await hfRows('model.layers.0.self_attn.q_proj.weight');
      const k = await hfRows('model.layers.1.self_attn.k_proj.weight');
      const v = await hfRows('model.layers.0.self_attn.v_proj.weight');
      for (const [head, j] of [[0, 0], [1, 3], [c.numHeads - 1, D / 2 - 1]]) {
        expect(readRow('blk.0.attn_q.weight', head * D + 2 * j, H)).toEqual(q(head * D + j));
        expect(readRow('blk.0.attn_q.weight', head * D + 2 * j + 1, H)).toEqual(q(head * D + D / 2 + j));
      }
      expect(readRow('blk.1.attn_k.weight', (c.numKvHeads - 1) * D + 1, H)).toEqual(k((c.numKvHeads - 1) * D + D / 2));
      expect(readRow('blk.0.attn_v.weight', 5, H)).toEqual(v(5));
      const nrm = await readTensorF64(st.get('model.layers.1.post_attention_layernorm.weight')!);
      {
        const t = byName.get('blk.1.ffn_norm.weight')!;
        for (let i = 0; i < H; i++) expect(raw.readFloatLE(h.dataOffset + t.offset + 4 * i)).toBe(Math.fround(nrm[i]));
      }

      // --- independent parser: node-llama-cpp's GGUF reader ---
      const info = await readGgufFileInfo(gguf, { readTensorInfo: true, logWarnings: false, sourceType: 'filesystem' });
      expect(info.version).toBe(3);
      expect(Number(info.totalTensorCount)).toBe(nTensors);
      expect(info.metadata.general.architecture).toBe('llama');
      const llamaMd = (info.metadata as unknown as { llama: Record<string, unknown> }).llama;
      expect(llamaMd.embedding_length).toBe(H);
      expect((llamaMd.attention as Record<string, unknown>).head_count_kv).toBe(c.numKvHeads);
      expect(info.fullTensorInfo?.find((t) => t.name === 'blk.0.ffn_gate.weight')?.dimensions.map(Number)).toEqual([H, c.intermediateSize]);

      // --- llama.cpp greedy tokens vs the float64 reference ---
      const r = refGreedy(ref, PROMPT, GEN);
      // The random model must not be near a tie, or f16 rounding inside llama.cpp could flip a token.
      expect(r.minMargin).toBeGreaterThan(0.02);
      const got = await greedyTokens(gguf, PROMPT, GEN, { threads: 2 });
      expect(got).toEqual(r.tokens);
    }, 120_000);
  }

  it('rejects a checkpoint with a missing tensor, and qwen2', async () => {
    const dir = path.join(root, 'broken');
    await makeTinyModel(dir, { seed: 3, layers: 1 });
    const good = path.join(root, 'broken.gguf');
    await exportGguf(dir, good);
    const { writeFile } = await import('node:fs/promises');
    const cfg = JSON.parse(await readFile(path.join(dir, 'config.json'), 'utf8')) as Record<string, unknown>;
    await writeFile(path.join(dir, 'config.json'), JSON.stringify({ ...cfg, num_hidden_layers: 2 }));
    await expect(exportGguf(dir, good)).rejects.toThrow(/model\.layers\.1\./);
    const q = path.join(root, 'qwen');
    await makeTinyModel(q, { seed: 3, arch: 'qwen2' });
    await expect(exportGguf(q, path.join(root, 'qwen.gguf'))).rejects.toThrow(/qwen2/);
  });
});

describe('f16 conversion', () => {
  it('round-trips halves and rounds to nearest even', () => {
    for (const x of [0, -0, 1, -2.5, 65504, 6.103515625e-5, 5.960464477539063e-8, 0.1]) {
      expect(f16BitsToF32(f32ToF16Bits(x))).toBe(x === 0.1 ? 0.0999755859375 : x);
    }
    expect(f16BitsToF32(f32ToF16Bits(70000))).toBe(Infinity);
    expect(f32ToF16Bits(1 + 2 ** -11)).toBe(0x3c00); // tie -> even
    expect(f32ToF16Bits(1 + 3 * 2 ** -11)).toBe(0x3c02); // tie -> even (up)
  });
});
