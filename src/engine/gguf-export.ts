/**
 * A Hugging Face Llama / Mistral / Qwen2 checkpoint (config.json, safetensors, tokenizer.json) as
 * a GGUF file that llama.cpp loads: its metadata keys, the byte-level BPE vocabulary, and the
 * tensors in F32, F16 or a ggml block type (quantized by the native addon).
 *
 * Conventions of llama.cpp's own converter and quantizer (convert_hf_to_gguf.py, llama-quant.cpp):
 *  - Llama-arch Q and K rows (and biases) are permuted per head from rotate_half pairs (i, i + d/2)
 *    to interleaved pairs (2i, 2i + 1); Qwen2 keeps HF's order (llama.cpp ropes it NEOX-style);
 *  - 1-D tensors (norms, biases, rope_freqs) stay F32;
 *  - Llama 3 RoPE scaling travels as rope_freqs.weight, per-frequency divisors;
 *  - the Q4_K_M / Q5_K_M mixes give output.weight (token_embd.weight when tied) Q6_K, and attn_v
 *    and ffn_down Q6_K in the layers use_more_bits picks, Q4_K / Q5_K elsewhere; a tensor whose rows
 *    do not fill whole blocks falls back to a smaller block type.
 *
 * Tensors are streamed: one is read, converted and written at a time.
 */
import { existsSync } from 'node:fs';
import { open, readFile } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { WeftError } from '../errors.js';
import { loadModelConfig, type ModelConfig } from './config.js';
import { bf16ToF32, f16ToF32, f32ToF16 } from './dtype.js';
import { ggmlType, meta, writeGguf, type GgufMeta, type GgufTensorToWrite, type WriteGgufResult } from './gguf.js';
import { native } from './native.js';
import { readSafetensorsIndex, type DType, type TensorInfo } from './safetensors.js';
import { resolveWeights } from './weights.js';

export type GgufOutType = 'f32' | 'f16' | 'q8_0' | 'q4_0' | 'q4_k_m' | 'q5_k_m';

/** llama_ftype of each output type (general.file_type). */
export const GGUF_FILE_TYPE: Record<GgufOutType, number> = { f32: 0, f16: 1, q4_0: 2, q8_0: 7, q4_k_m: 15, q5_k_m: 17 };
const BASE_TYPE: Record<GgufOutType, string> = { f32: 'F32', f16: 'F16', q8_0: 'Q8_0', q4_0: 'Q4_0', q4_k_m: 'Q4_K', q5_k_m: 'Q5_K' };

/** llama.cpp token types. */
const TOKEN_TYPE = { NORMAL: 1, CONTROL: 3, USER_DEFINED: 4, UNUSED: 5 } as const;

/** The native addon's ggml quantizer (native/src/addon_quant.cpp). */
interface NativeQuant {
  quantize(type: string, values: Float32Array): Uint8Array;
  dequantize(type: string, blocks: Uint8Array, n: number): Float32Array;
}

export function nativeQuant(): NativeQuant {
  const q = (native() as unknown as { quant?: NativeQuant }).quant;
  if (!q) throw new WeftError('WEFT_INTERNAL', 'this build of the native addon has no ggml quantizer (native().quant): rebuild it (npm run build)');
  return q;
}

// ---------------------------------------------------------------------------------------------
// Which ggml type each tensor gets
// ---------------------------------------------------------------------------------------------

/** llama.cpp's choice of layers that get more bits in the K mixes. */
function useMoreBits(layer: number, numLayers: number): boolean {
  const eighth = Math.floor(numLayers / 8);
  return layer < eighth || layer >= Math.floor((7 * numLayers) / 8) || (layer - eighth) % 3 === 2;
}

/**
 * The ggml type of a tensor under an output type, as llama.cpp's llama_tensor_get_type picks it
 * for a dense model without an importance matrix. `shape` is HF order; `layer` the block index.
 */
export function ggufTensorType(out: GgufOutType, name: string, shape: readonly number[], layer: number | null, numLayers: number, tied: boolean): string {
  if (shape.length < 2) return 'F32';
  let type = BASE_TYPE[out];
  if (out === 'f32' || out === 'f16') return type;
  const kMix = out === 'q4_k_m' || out === 'q5_k_m';
  const ne0 = shape[shape.length - 1];
  if (name === 'output.weight' || (tied && name === 'token_embd.weight')) {
    type = ne0 % 256 !== 0 ? 'Q8_0' : type === 'Q8_0' ? 'Q8_0' : 'Q6_K';
  } else if (kMix && layer !== null && (name.endsWith('.attn_v.weight') || name.endsWith('.ffn_down.weight')) && useMoreBits(layer, numLayers)) {
    type = 'Q6_K';
  }
  // Rows that do not fill whole blocks: llama.cpp falls back to Q5_0 / Q5_1 / Q8_0 (weft: Q8_0), then F16.
  if (ne0 % ggmlType(type)!.blockSize !== 0) type = ne0 % 32 === 0 ? 'Q8_0' : 'F16';
  return type;
}

// ---------------------------------------------------------------------------------------------
// Vocabulary
// ---------------------------------------------------------------------------------------------

interface Vocab { tokens: string[]; types: number[]; merges: string[]; pre: string; bos: number | null; eos: number | null; addBos: boolean; addEos: boolean; chatTemplate: string | null }

/** The HF tokenizer.json originals of llama.cpp's pre-tokenizer types (a Split before ByteLevel). */
const PRE_BY_REGEX: Record<string, string> = {
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+": 'llama-bpe',
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+": 'qwen2',
};

type Json = Record<string, unknown>;

/** tokenizer.ggml.pre for a byte-level tokenizer.json's pre-tokenizer. */
function preType(pre: unknown, file: string): string {
  const p = pre as Json | null;
  if (p?.type === 'ByteLevel' && p.use_regex !== false) return 'gpt-2';
  const parts = p?.type === 'Sequence' ? (p.pretokenizers as Json[]) : [];
  const split = parts.length === 2 && parts[0]?.type === 'Split' && parts[1]?.type === 'ByteLevel' ? (parts[0].pattern as Json | undefined)?.Regex : undefined;
  const name = typeof split === 'string' ? PRE_BY_REGEX[split] : undefined;
  if (!name) throw new WeftError('WEFT_TOKENIZER', `${file}: this pre-tokenizer has no llama.cpp pre type weft knows (${JSON.stringify(pre).slice(0, 200)})`);
  return name;
}

/** GPT-2 byte-level alphabet: byte -> printable character. */
function byteLevelAlphabet(): string[] {
  const table: string[] = new Array(256);
  let n = 0;
  for (let b = 0; b < 256; b++) {
    const printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || b >= 0xae;
    table[b] = String.fromCodePoint(printable ? b : 256 + n++);
  }
  return table;
}

/**
 * tokenizer.ggml.* from tokenizer.json (byte-level BPE) and tokenizer_config.json, padded with
 * "[PADn]" (UNUSED) up to vocab_size. Without tokenizer.json: the 256 byte tokens and pads (llama.cpp
 * needs a vocabulary even when token ids are fed directly).
 */
async function readVocab(dir: string, c: ModelConfig): Promise<Vocab> {
  const tokens: (string | undefined)[] = new Array(c.vocabSize).fill(undefined);
  const types: number[] = new Array(c.vocabSize).fill(TOKEN_TYPE.NORMAL);
  const vocab: Vocab = { tokens: [], types, merges: [], pre: 'gpt-2', bos: c.bosTokenId, eos: c.eosTokenIds[0] ?? null, addBos: false, addEos: false, chatTemplate: null };
  const tjPath = path.join(dir, 'tokenizer.json');
  if (existsSync(tjPath)) {
    const tj = JSON.parse(await readFile(tjPath, 'utf8')) as Json & {
      model?: { type?: string; vocab?: Record<string, number>; merges?: (string | [string, string])[]; byte_fallback?: boolean };
      added_tokens?: { id: number; content: string; special?: boolean }[];
    };
    if (!tj.model?.vocab || (tj.model.type ?? 'BPE') !== 'BPE' || tj.model.byte_fallback) {
      throw new WeftError('WEFT_TOKENIZER', `${tjPath}: only byte-level BPE tokenizers are exported to GGUF`);
    }
    vocab.pre = preType(tj.pre_tokenizer, tjPath);
    const put = (id: number, tok: string, type: number): void => {
      if (!Number.isInteger(id) || id < 0 || id >= c.vocabSize) throw new WeftError('WEFT_TOKENIZER', `${tjPath}: token id ${id} is not below vocab_size ${c.vocabSize}`);
      tokens[id] = tok;
      types[id] = type;
    };
    for (const [tok, id] of Object.entries(tj.model.vocab)) put(id, tok, TOKEN_TYPE.NORMAL);
    for (const a of tj.added_tokens ?? []) put(a.id, a.content, a.special ? TOKEN_TYPE.CONTROL : TOKEN_TYPE.USER_DEFINED);
    vocab.merges = (tj.model.merges ?? []).map((m) => (typeof m === 'string' ? m : `${m[0]} ${m[1]}`));
    const eot = (tj.added_tokens ?? []).find((a) => a.content === '<|endoftext|>');
    vocab.bos ??= eot?.id ?? null;
    vocab.eos ??= eot?.id ?? null;
    const cfgPath = path.join(dir, 'tokenizer_config.json');
    const cfg = existsSync(cfgPath) ? (JSON.parse(await readFile(cfgPath, 'utf8')) as Json) : {};
    const bosText = vocab.bos === null ? null : tokens[vocab.bos];
    vocab.addBos = cfg.add_bos_token === true || (bosText !== undefined && bosText !== null && JSON.stringify(tj.post_processor ?? null).includes(JSON.stringify(bosText)));
    vocab.addEos = cfg.add_eos_token === true;
    vocab.chatTemplate = typeof cfg.chat_template === 'string' ? cfg.chat_template : null;
  } else {
    byteLevelAlphabet().forEach((ch, b) => b < c.vocabSize && (tokens[b] = ch));
  }
  vocab.tokens = tokens.map((t, i) => {
    if (t !== undefined) return t;
    types[i] = TOKEN_TYPE.UNUSED;
    return `[PAD${i}]`;
  });
  return vocab;
}

function vocabMetadata(v: Vocab): Record<string, GgufMeta> {
  const m: Record<string, GgufMeta> = {
    'tokenizer.ggml.model': meta.str('gpt2'),
    'tokenizer.ggml.pre': meta.str(v.pre),
    'tokenizer.ggml.tokens': meta.strings(v.tokens),
    'tokenizer.ggml.token_type': meta.i32s(v.types),
    'tokenizer.ggml.merges': meta.strings(v.merges),
  };
  if (v.bos !== null) m['tokenizer.ggml.bos_token_id'] = meta.u32(v.bos);
  if (v.eos !== null) m['tokenizer.ggml.eos_token_id'] = meta.u32(v.eos);
  m['tokenizer.ggml.add_bos_token'] = meta.bool(v.addBos);
  m['tokenizer.ggml.add_eos_token'] = meta.bool(v.addEos);
  if (v.chatTemplate !== null) m['tokenizer.chat_template'] = meta.str(v.chatTemplate);
  return m;
}

// ---------------------------------------------------------------------------------------------
// Tensor data
// ---------------------------------------------------------------------------------------------

/** A little-endian F32/F16/BF16 tensor as float32. */
function toF32(raw: Buffer, dtype: DType): Float32Array {
  const out = new Float32Array(raw.length / (dtype === 'F32' ? 4 : 2));
  if (dtype === 'F32') new Uint8Array(out.buffer).set(raw);
  else if (dtype === 'BF16') for (let i = 0; i < out.length; i++) out[i] = bf16ToF32(raw.readUInt16LE(2 * i));
  else for (let i = 0; i < out.length; i++) out[i] = f16ToF32(raw.readUInt16LE(2 * i));
  return out;
}

/** Bytes of `raw` (dtype) as ggml `type`; F32 -> F32 and F16 -> F16 are copies. */
function encode(raw: Buffer, dtype: DType, type: string): Uint8Array {
  if (type === dtype && (type === 'F32' || type === 'F16')) return raw;
  const f = toF32(raw, dtype);
  if (type === 'F32') return new Uint8Array(f.buffer);
  if (type === 'F16') {
    const out = Buffer.alloc(f.length * 2);
    for (let i = 0; i < f.length; i++) out.writeUInt16LE(f32ToF16(f[i]), 2 * i);
    return out;
  }
  return nativeQuant().quantize(type, f);
}

/**
 * Rows of a [nHead * headDim, ...] projection (or its bias) from HF's rotate_half order to
 * llama.cpp's interleaved order: new row h*d + 2j + s <- old row h*d + s*(d/2) + j.
 */
function permuteRows(raw: Buffer, rows: number, nHead: number): Buffer {
  const d = rows / nHead;
  if (!Number.isInteger(d) || d % 2 !== 0) throw new WeftError('WEFT_TENSOR_SHAPE', `cannot permute ${rows} rows over ${nHead} heads`);
  const rowBytes = raw.length / rows;
  const out = Buffer.alloc(raw.length);
  const half = d / 2;
  for (let h = 0; h < nHead; h++) {
    for (let j = 0; j < half; j++) {
      for (let s = 0; s < 2; s++) {
        const src = h * d + s * half + j;
        raw.copy(out, (h * d + 2 * j + s) * rowBytes, src * rowBytes, (src + 1) * rowBytes);
      }
    }
  }
  return out;
}

/** llama3 rope scaling as llama.cpp takes it: per-frequency divisors. */
function llama3RopeFactors(c: ModelConfig): Float32Array {
  const rs = c.ropeScaling!;
  const half = c.headDim / 2;
  const out = new Float32Array(half);
  const lowWavelen = rs.originalMaxPositionEmbeddings / rs.lowFreqFactor;
  const highWavelen = rs.originalMaxPositionEmbeddings / rs.highFreqFactor;
  for (let i = 0; i < half; i++) {
    const wavelen = (2 * Math.PI) * c.ropeTheta ** ((2 * i) / c.headDim);
    if (wavelen < highWavelen) out[i] = 1;
    else if (wavelen > lowWavelen) out[i] = rs.factor;
    else {
      const smooth = (rs.originalMaxPositionEmbeddings / wavelen - rs.lowFreqFactor) / (rs.highFreqFactor - rs.lowFreqFactor);
      out[i] = 1 / ((1 - smooth) / rs.factor + smooth);
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Export
// ---------------------------------------------------------------------------------------------

export interface ExportGgufOptions {
  /** Output type (default f16). */
  type?: GgufOutType;
}

export interface ExportGgufResult extends WriteGgufResult {
  /** The ggml type each tensor was written in. */
  tensorTypes: Map<string, string>;
}

function archMetadata(arch: string, c: ModelConfig): Record<string, GgufMeta> {
  const k = (key: string): string => `${arch}.${key}`;
  return {
    [k('vocab_size')]: meta.u32(c.vocabSize),
    [k('context_length')]: meta.u32(c.maxPositionEmbeddings),
    [k('embedding_length')]: meta.u32(c.hiddenSize),
    [k('block_count')]: meta.u32(c.numLayers),
    [k('feed_forward_length')]: meta.u32(c.intermediateSize),
    [k('rope.dimension_count')]: meta.u32(c.headDim),
    [k('attention.head_count')]: meta.u32(c.numHeads),
    [k('attention.head_count_kv')]: meta.u32(c.numKvHeads),
    [k('attention.key_length')]: meta.u32(c.headDim),
    [k('attention.value_length')]: meta.u32(c.headDim),
    [k('attention.layer_norm_rms_epsilon')]: meta.f32(c.rmsNormEps),
    [k('rope.freq_base')]: meta.f32(c.ropeTheta),
  };
}

/**
 * Writes a GGUF v3 file for llama.cpp from a Hugging Face Llama, Mistral or Qwen2 directory.
 * Matrices are written as `type` (default f16, llama.cpp's mix for the K types); 1-D tensors F32.
 */
export async function exportGguf(hfDir: string, outPath: string, opts: ExportGgufOptions = {}): Promise<ExportGgufResult> {
  const out = opts.type ?? 'f16';
  if (!(out in GGUF_FILE_TYPE)) throw new WeftError('WEFT_BAD_ARGUMENT', `GGUF output type ${out} is not one of ${Object.keys(GGUF_FILE_TYPE).join(', ')}`);
  const c = await loadModelConfig(hfDir);
  if (c.architecture !== 'llama' && c.architecture !== 'mistral' && c.architecture !== 'qwen2') {
    throw new WeftError('WEFT_UNSUPPORTED_ARCH', `${hfDir}: GGUF export handles llama, mistral and qwen2, not ${c.architecture}`);
  }
  const arch = c.architecture === 'qwen2' ? 'qwen2' : 'llama';
  const permute = arch === 'llama';
  const w = resolveWeights(c, await readSafetensorsIndex(hfDir));
  const vocab = await readVocab(hfDir, c);
  const tied = c.tieWordEmbeddings || w.lmHead === w.embed;

  const files = new Map<string, FileHandle>();
  const readRaw = async (t: TensorInfo): Promise<Buffer> => {
    let fh = files.get(t.file);
    if (!fh) {
      fh = await open(t.file, 'r');
      files.set(t.file, fh);
    }
    const b = Buffer.alloc(t.nbytes);
    const { bytesRead } = await fh.read(b, 0, t.nbytes, t.offset);
    if (bytesRead !== t.nbytes) throw new WeftError('WEFT_MODEL_FORMAT', `${t.file}: short read of ${t.name}`);
    return b;
  };

  const tensorTypes = new Map<string, string>();
  const tensors: GgufTensorToWrite[] = [];
  const add = (name: string, src: TensorInfo, layer: number | null, permuteHeads?: number): void => {
    const type = ggufTensorType(out, name, src.shape, layer, c.numLayers, tied);
    tensorTypes.set(name, type);
    tensors.push({
      name, type, shape: src.shape,
      data: async () => {
        const raw = await readRaw(src);
        return encode(permuteHeads === undefined ? raw : permuteRows(raw, src.shape[0], permuteHeads), src.dtype as DType, type);
      },
    });
  };

  add('token_embd.weight', w.embed, null);
  if (c.ropeScaling) {
    const rf = llama3RopeFactors(c);
    tensorTypes.set('rope_freqs.weight', 'F32');
    tensors.push({ name: 'rope_freqs.weight', type: 'F32', shape: [rf.length], data: new Uint8Array(rf.buffer) });
  }
  w.layers.forEach((l, i) => {
    const b = `blk.${i}.`;
    const heads = (n: number): number | undefined => (permute ? n : undefined);
    add(`${b}attn_norm.weight`, l.inputNorm, i);
    add(`${b}attn_q.weight`, l.q, i, heads(c.numHeads));
    add(`${b}attn_k.weight`, l.k, i, heads(c.numKvHeads));
    add(`${b}attn_v.weight`, l.v, i);
    if (l.qBias) add(`${b}attn_q.bias`, l.qBias, i, heads(c.numHeads));
    if (l.kBias) add(`${b}attn_k.bias`, l.kBias, i, heads(c.numKvHeads));
    if (l.vBias) add(`${b}attn_v.bias`, l.vBias, i);
    add(`${b}attn_output.weight`, l.o, i);
    if (l.oBias) add(`${b}attn_output.bias`, l.oBias, i);
    add(`${b}ffn_norm.weight`, l.postNorm, i);
    add(`${b}ffn_gate.weight`, l.gate, i);
    add(`${b}ffn_up.weight`, l.up, i);
    add(`${b}ffn_down.weight`, l.down, i);
  });
  add('output_norm.weight', w.norm, null);
  // Tied embeddings: no output.weight (llama.cpp then uses token_embd for the LM head).
  if (!tied) add('output.weight', w.lmHead, null);

  const metadata: Record<string, GgufMeta> = {
    'general.architecture': meta.str(arch),
    'general.name': meta.str(path.basename(path.resolve(hfDir))),
    'general.file_type': meta.u32(GGUF_FILE_TYPE[out]),
    'general.quantization_version': meta.u32(2),
    ...archMetadata(arch, c),
    ...vocabMetadata(vocab),
  };
  try {
    return { ...(await writeGguf(outPath, { metadata, tensors })), tensorTypes };
  } finally {
    for (const fh of files.values()) await fh.close();
  }
}
