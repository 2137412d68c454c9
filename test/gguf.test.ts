/**
 * src/engine/gguf-export.ts: tiny random Llama / Mistral / Qwen2 checkpoints (scripts/make-tiny-model.ts)
 * exported to GGUF must (1) parse back with the values written (our reader and node-llama-cpp's
 * independent one), with tensor bytes kept and Q/K rows permuted to llama.cpp's interleaved RoPE
 * layout for llama, (2) generate under llama.cpp (node-llama-cpp's prebuilt CPU binary, never
 * downloaded or built) the same greedy tokens as the float64 reference forward pass
 * (test/reference/forward.ts); quantized exports follow llama.cpp's type mix, dequantize close to
 * the checkpoint, and run under llama.cpp.
 */
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readGgufFileInfo } from 'node-llama-cpp';
import { greedyTokens } from '../bench/llamacpp.js';
import { makeTinyModel, type TinyModelOptions } from '../scripts/make-tiny-model.js';
import { f16ToF32, f32ToF16, readTensorBytes, readTensorF64 } from '../src/engine/dtype.js';
import { GGUF_MAGIC, readGguf, type GgufTensor } from '../src/engine/gguf.js';
import { exportGguf, ggufTensorType, nativeQuant, type GgufOutType } from '../src/engine/gguf-export.js';
import { readSafetensorsIndex, type TensorInfo } from '../src/engine/safetensors.js';
import { loadGgufTokenizer } from '../src/tokenizer/gguf-tokenizer.js';
import { Tokenizer } from '../src/tokenizer/tokenizer.js';
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

/** A tensor's rows as float32 values (F32/F16 files). */
function rowReader(raw: Buffer, t: GgufTensor) {
  const elt = t.typeName === 'F16' ? 2 : 4;
  const cols = t.shape[t.shape.length - 1];
  return (row: number): number[] => {
    const start = t.offset + row * cols * elt;
    return Array.from({ length: cols }, (_, i) => (elt === 2 ? f16ToF32(raw.readUInt16LE(start + 2 * i)) : raw.readFloatLE(start + 4 * i)));
  };
}

describe('exportGguf: float types', () => {
  const variants: { name: string; gen: TinyModelOptions; out: 'f16' | 'f32'; dropTokenizer?: boolean }[] = [
    { name: 'llama f16 -> f16 GGUF', gen: { arch: 'llama', dtype: 'f16', seed: 21, initScale: 3 }, out: 'f16' },
    {
      name: 'llama bf16, tied, llama3 rope scaling, 2 shards -> f16 GGUF',
      gen: { arch: 'llama', dtype: 'bf16', seed: 22, initScale: 3, tie: true, ropeScaling: 'llama3', shards: 2, ropeTheta: 500000 },
      out: 'f16',
    },
    { name: 'mistral f32 -> f32 GGUF, no tokenizer.json', gen: { arch: 'mistral', dtype: 'f32', seed: 23, initScale: 3, heads: 8, kvHeads: 2 }, out: 'f32', dropTokenizer: true },
    { name: 'qwen2 f32 (q/k/v biases) -> f32 GGUF', gen: { arch: 'qwen2', dtype: 'f32', seed: 33, initScale: 3 }, out: 'f32' },
  ];
  for (const variant of variants) {
    it(`${variant.name}: header round trip; llama.cpp greedy tokens = float64 reference`, async () => {
      const dir = path.join(root, variant.name.replace(/[^a-z0-9]+/gi, '_'));
      await makeTinyModel(dir, variant.gen);
      if (variant.dropTokenizer) await rm(path.join(dir, 'tokenizer.json'));
      const ref = await ReferenceModel.load(dir);
      const c = ref.config;
      const tied = c.tieWordEmbeddings;
      const qwen = c.architecture === 'qwen2';
      const arch = qwen ? 'qwen2' : 'llama';
      const gguf = `${dir}.gguf`;
      const res = await exportGguf(dir, gguf, { type: variant.out });
      const nTensors = 2 + 9 * c.numLayers + (tied ? 0 : 1) + (c.ropeScaling ? 1 : 0) + (qwen ? 3 * c.numLayers : 0);
      expect(res.tensorCount).toBe(nTensors);

      // --- header round trip (our reader) ---
      const raw = await readFile(gguf);
      expect(raw.readUInt32LE(0)).toBe(GGUF_MAGIC);
      expect(raw.length).toBe(res.bytes);
      const g = await readGguf(gguf);
      expect(g.version).toBe(3);
      expect(g.alignment).toBe(32);
      expect(g.tensors).toHaveLength(nTensors);
      const md = g.metadata;
      const D = c.headDim;
      expect(md.get('general.architecture')).toBe(arch);
      expect(md.get('general.file_type')).toBe(variant.out === 'f16' ? 1 : 0);
      expect(md.get(`${arch}.embedding_length`)).toBe(c.hiddenSize);
      expect(md.get(`${arch}.block_count`)).toBe(c.numLayers);
      expect(md.get(`${arch}.feed_forward_length`)).toBe(c.intermediateSize);
      // as llama.cpp's converter: vocab_size and rope.dimension_count for llama only (llama.cpp derives them)
      expect(md.get(`${arch}.rope.dimension_count`)).toBe(qwen ? undefined : D);
      expect(md.get(`${arch}.attention.head_count`)).toBe(c.numHeads);
      expect(md.get(`${arch}.attention.head_count_kv`)).toBe(c.numKvHeads);
      expect(md.get(`${arch}.context_length`)).toBe(c.maxPositionEmbeddings);
      expect(md.get(`${arch}.vocab_size`)).toBe(qwen ? undefined : c.vocabSize);
      expect(md.get(`${arch}.attention.layer_norm_rms_epsilon`)).toBe(Math.fround(c.rmsNormEps));
      expect(md.get(`${arch}.rope.freq_base`)).toBe(c.ropeTheta);
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

      const byName = new Map(g.tensors.map((t) => [t.name, t]));
      expect(byName.get('token_embd.weight')?.ne).toEqual([c.hiddenSize, c.vocabSize]);
      expect(byName.has('output.weight')).toBe(!tied);
      expect(byName.get('blk.1.attn_k.weight')?.shape).toEqual([c.numKvHeads * D, c.hiddenSize]);
      expect(byName.get('blk.0.attn_output.weight')?.ne).toEqual([c.numHeads * D, c.hiddenSize]);
      expect(byName.get('blk.0.ffn_down.weight')?.ne).toEqual([c.intermediateSize, c.hiddenSize]);
      expect(byName.get('blk.0.attn_norm.weight')?.dtype).toBe('F32'); // norms stay f32
      expect(byName.get('blk.0.attn_q.weight')?.dtype).toBe(variant.out.toUpperCase());
      if (qwen) expect(byName.get('blk.1.attn_k.bias')).toMatchObject({ dtype: 'F32', shape: [c.numKvHeads * D] });
      if (c.ropeScaling) expect(byName.get('rope_freqs.weight')?.ne).toEqual([D / 2]);
      for (const t of g.tensors) expect((t.offset - g.dataOffset) % 32).toBe(0);

      // Tensor bytes. llama Q/K: interleaved row h*D + 2j + s holds HF row h*D + s*D/2 + j; qwen2 keeps HF's order.
      const st = await readSafetensorsIndex(dir);
      const elt = variant.out === 'f16' ? 2 : 4;
      const H = c.hiddenSize;
      const hfRows = async (name: string) => {
        const data = await readTensorF64(st.get(name)!);
        const cols = data.length / st.get(name)!.shape[0];
        return (r: number) => Array.from(data.subarray(r * cols, (r + 1) * cols), (x) => (elt === 2 ? f16ToF32(f32ToF16(x)) : Math.fround(x)));
      };
      const q = await hfRows('model.layers.0.self_attn.q_proj.weight');
      const k = await hfRows('model.layers.1.self_attn.k_proj.weight');
      const v = await hfRows('model.layers.0.self_attn.v_proj.weight');
      const row = (name: string) => rowReader(raw, byName.get(name)!);
      for (const [head, j] of [[0, 0], [1, 3], [c.numHeads - 1, D / 2 - 1]]) {
        expect(row('blk.0.attn_q.weight')(head * D + 2 * j)).toEqual(q(head * D + (qwen ? 2 * j : j)));
        expect(row('blk.0.attn_q.weight')(head * D + 2 * j + 1)).toEqual(q(head * D + (qwen ? 2 * j + 1 : D / 2 + j)));
      }
      expect(row('blk.1.attn_k.weight')((c.numKvHeads - 1) * D + 1)).toEqual(k((c.numKvHeads - 1) * D + (qwen ? 1 : D / 2)));
      expect(row('blk.0.attn_v.weight')(5)).toEqual(v(5));
      const nrm = await readTensorF64(st.get('model.layers.1.post_attention_layernorm.weight')!);
      expect(rowReader(raw, { ...byName.get('blk.1.ffn_norm.weight')!, typeName: 'F32' })(0)).toEqual(Array.from(nrm, (x) => Math.fround(x)));
      if (qwen) {
        const bias = await readTensorF64(st.get('model.layers.1.self_attn.k_proj.bias')!);
        expect(rowReader(raw, byName.get('blk.1.attn_k.bias')!)(0)).toEqual(Array.from(bias, (x) => Math.fround(x)));
      }
      expect(H).toBe(byName.get('token_embd.weight')!.shape[1]);

      // --- independent parser: node-llama-cpp's GGUF reader ---
      const info = await readGgufFileInfo(gguf, { readTensorInfo: true, logWarnings: false, sourceType: 'filesystem' });
      expect(info.version).toBe(3);
      expect(Number(info.totalTensorCount)).toBe(nTensors);
      expect(info.metadata.general.architecture).toBe(arch);
      const archMd = (info.metadata as unknown as Record<string, Record<string, unknown>>)[arch];
      expect(archMd.embedding_length).toBe(H);
      expect((archMd.attention as Record<string, unknown>).head_count_kv).toBe(c.numKvHeads);
      expect(info.fullTensorInfo?.find((t) => t.name === 'blk.0.ffn_gate.weight')?.dimensions.map(Number)).toEqual([H, c.intermediateSize]);

      // --- llama.cpp greedy tokens vs the float64 reference ---
      const r = refGreedy(ref, PROMPT, GEN);
      // The random model must not be near a tie, or f16 rounding inside llama.cpp could flip a token.
      expect(r.minMargin).toBeGreaterThan(0.02);
      const got = await greedyTokens(gguf, PROMPT, GEN, { threads: 2 });
      expect(got).toEqual(r.tokens);
    }, 120_000);
  }

  it('rejects a checkpoint with a missing tensor, and an architecture it does not export', async () => {
    const dir = path.join(root, 'broken');
    await makeTinyModel(dir, { seed: 3, layers: 1 });
    const good = path.join(root, 'broken.gguf');
    await exportGguf(dir, good);
    const cfg = JSON.parse(await readFile(path.join(dir, 'config.json'), 'utf8')) as Record<string, unknown>;
    await writeFile(path.join(dir, 'config.json'), JSON.stringify({ ...cfg, num_hidden_layers: 2 }));
    await expect(exportGguf(dir, good)).rejects.toThrow(/model\.layers\.1\./);
    await writeFile(path.join(dir, 'config.json'), JSON.stringify({ ...cfg, architectures: ['Qwen3ForCausalLM'], model_type: 'qwen3' }));
    await expect(exportGguf(dir, good)).rejects.toMatchObject({ code: expect.stringMatching(/WEFT_(UNSUPPORTED_ARCH|TENSOR_MISSING)/) });
  });
});

describe('exportGguf: quantized types', () => {
  /** 8 layers 256 wide: the K mixes' layer choice (use_more_bits: 0, 3, 6, 7) and whole 256-blocks. */
  const GEN_OPTS: TinyModelOptions = { arch: 'llama', dtype: 'f32', seed: 38, initScale: 3, hidden: 256, layers: 8, heads: 4, kvHeads: 2, ffn: 512, vocab: 512 };
  let dir = '';
  let ref: ReferenceModel;
  let st: Map<string, TensorInfo>;
  beforeAll(async () => {
    dir = path.join(root, 'quant-src');
    await makeTinyModel(dir, GEN_OPTS);
    ref = await ReferenceModel.load(dir);
    st = await readSafetensorsIndex(dir);
  });

  it("ggufTensorType follows llama.cpp's mix", () => {
    const t = (out: GgufOutType, name: string, shape: number[], layer: number | null, tied = false) => ggufTensorType(out, name, shape, layer, 8, tied);
    const picked = [0, 1, 2, 3, 4, 5, 6, 7].filter((i) => t('q4_k_m', `blk.${i}.attn_v.weight`, [128, 256], i) === 'Q6_K');
    expect(picked).toEqual([0, 3, 6, 7]);
    expect(t('q4_k_m', 'blk.1.ffn_down.weight', [256, 512], 1)).toBe('Q4_K');
    expect(t('q4_k_m', 'blk.7.ffn_down.weight', [256, 512], 7)).toBe('Q6_K');
    expect(t('q5_k_m', 'blk.6.ffn_down.weight', [256, 512], 6)).toBe('Q6_K');
    expect(t('q5_k_m', 'blk.1.attn_q.weight', [256, 256], 1)).toBe('Q5_K');
    expect(t('q4_k_m', 'output.weight', [512, 256], null)).toBe('Q6_K');
    expect(t('q4_k_m', 'token_embd.weight', [512, 256], null)).toBe('Q4_K');
    expect(t('q4_k_m', 'token_embd.weight', [512, 256], null, true)).toBe('Q6_K'); // tied: the output's rule
    expect(t('q4_0', 'output.weight', [512, 256], null)).toBe('Q6_K');
    expect(t('q8_0', 'output.weight', [512, 256], null)).toBe('Q8_0');
    expect(t('q4_0', 'blk.0.attn_v.weight', [128, 256], 0)).toBe('Q4_0');
    expect(t('q4_k_m', 'output.weight', [512, 96], null)).toBe('Q8_0');
    expect(t('q4_k_m', 'blk.1.attn_q.weight', [64, 64], 1)).toBe('Q8_0'); // rows of 64: no whole 256-blocks
    expect(t('q8_0', 'blk.1.attn_q.weight', [48, 48], 1)).toBe('F16');
    expect(t('q4_k_m', 'blk.1.attn_norm.weight', [256], 1)).toBe('F32');
  });

  for (const [out, fileType, tol] of [['q8_0', 7, 0.01], ['q4_0', 2, 0.15], ['q4_k_m', 15, 0.12], ['q5_k_m', 17, 0.06]] as const) {
    it(`${out}: the mix in the file, weights dequantize close to the checkpoint, llama.cpp runs it`, async () => {
      const gguf = path.join(root, `quant.${out}.gguf`);
      const res = await exportGguf(dir, gguf, { type: out });
      const g = await readGguf(gguf);
      expect(g.metadata.get('general.file_type')).toBe(fileType);
      for (const t of g.tensors) expect(t.typeName, t.name).toBe(res.tensorTypes.get(t.name));
      // node-llama-cpp's reader sees the same types (ggml ids)
      const info = await readGgufFileInfo(gguf, { readTensorInfo: true, logWarnings: false, sourceType: 'filesystem' });
      for (const t of info.fullTensorInfo ?? []) expect(Number(t.ggmlType), t.name).toBe(g.tensors.find((x) => x.name === t.name)!.ggmlType);

      // Dequantized weights (v and down are not permuted) against the checkpoint.
      const quant = nativeQuant();
      for (const [gname, hfName] of [['blk.2.attn_v.weight', 'model.layers.2.self_attn.v_proj.weight'], ['blk.3.ffn_down.weight', 'model.layers.3.mlp.down_proj.weight'], ['output.weight', 'lm_head.weight']]) {
        const t = g.tensors.find((x) => x.name === gname)!;
        const want = await readTensorF64(st.get(hfName)!);
        const got = quant.dequantize(t.typeName, await readTensorBytes({ ...t, file: gguf, dtype: t.dtype! }), t.numElements);
        let err = 0;
        let norm = 0;
        for (let i = 0; i < want.length; i++) {
          err += (want[i] - got[i]) ** 2;
          norm += want[i] ** 2;
        }
        expect(Math.sqrt(err / norm), `${gname} (${t.typeName})`).toBeLessThan(t.typeName === 'Q6_K' ? 0.03 : tol);
      }

      // 8-bit weights keep this model's greedy path (its top-2 logit gap stays above 0.1); 4- and 5-bit ones need not.
      const r = refGreedy(ref, PROMPT, 8);
      const got = await greedyTokens(gguf, PROMPT, 8, { threads: 2 });
      expect(got).toHaveLength(8);
      if (out === 'q8_0') {
        expect(r.minMargin).toBeGreaterThan(0.1);
        expect(got).toEqual(r.tokens);
      }
    }, 120_000);
  }
});

describe('exportGguf: the default model', () => {
  it('q4_k_m: llama.cpp loads it, and its tokenizer (from the GGUF metadata) encodes as tokenizer.json does', async () => {
    const modelDir = path.join(import.meta.dirname, '..', 'models', 'default');
    const gguf = path.join(root, 'default.q4_k_m.gguf');
    const res = await exportGguf(modelDir, gguf, { type: 'q4_k_m' });
    expect(res.tensorTypes.get('token_embd.weight')).toBe('Q6_K'); // tied: quantized as the output
    expect(res.tensorTypes.has('output.weight')).toBe(false);
    const g = await readGguf(gguf);
    const fromGguf = loadGgufTokenizer(g.metadata, gguf);
    const fromDir = await Tokenizer.fromDir(modelDir);
    const texts = (JSON.parse(await readFile(path.join(import.meta.dirname, 'fixtures', 'tokenizer', 'texts.json'), 'utf8')) as { texts: string[] }).texts;
    // The same ids but where llama.cpp's whitespace (U+0085 is one, U+FEFF is not) differs from the
    // JS regex of tokenizers.js' ByteLevel pre-tokenizer (the other way round).
    const differ = texts.filter((text) => JSON.stringify(fromGguf.encode(text)) !== JSON.stringify(fromDir.encode(text)));
    expect(differ.length).toBeLessThan(texts.length / 10);
    for (const text of differ) expect(text, JSON.stringify(text)).toMatch(/[\u0085\ufeff]/);
    expect(fromGguf.chatTemplate).toBe(fromDir.chatTemplate);
    expect(await greedyTokens(gguf, fromDir.encode('And he answered and said,'), 4, { threads: 2 })).toHaveLength(4);
  }, 120_000);
});
