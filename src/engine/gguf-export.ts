/**
 * A Hugging Face checkpoint (config.json, safetensors, tokenizer.json) as a GGUF file that llama.cpp
 * loads: Llama and Mistral (llama.cpp's llama), Qwen2, Qwen3, Gemma 2, Gemma 3, Phi-3. Its metadata
 * keys (gguf-export-keys.ts), the byte-level BPE vocabulary (gguf-vocab.ts), and the tensors in
 * F32, F16 or a ggml block type (quantized by the native addon).
 *
 * Conventions of llama.cpp's own converter and quantizer (convert_hf_to_gguf.py, llama-quant.cpp):
 *  - Llama-arch Q and K rows (and biases) are permuted per head from rotate_half pairs (i, i + d/2)
 *    to interleaved pairs (2i, 2i + 1); the other architectures keep HF's order (llama.cpp ropes
 *    them NEOX-style);
 *  - tensor names: Qwen3 / Gemma 3 `attn_q_norm` / `attn_k_norm`; Gemma's four norms a layer are
 *    `attn_norm`, `post_attention_norm`, `ffn_norm` (pre-feed-forward), `post_ffw_norm`, every norm
 *    stored as w + 1; Phi-3's fused `attn_qkv` and `ffn_up` (gate | up) as they are;
 *  - 1-D tensors (norms, biases, rope factors) stay F32;
 *  - Llama 3 RoPE scaling travels as rope_freqs.weight, per-frequency divisors; Phi-3's LongRoPE as
 *    rope_factors_long / rope_factors_short.weight;
 *  - the Q4_K_M / Q5_K_M mixes give output.weight (token_embd.weight when tied) Q6_K, attn_v and
 *    ffn_down Q6_K in the layers use_more_bits picks, a fused attn_qkv Q5_K / Q6_K, Q4_K / Q5_K
 *    elsewhere; a tensor whose rows do not fill whole blocks falls back to a smaller block type.
 * Gemma 3's converter also cuts token_embd to the count of tokenizer.json's tokens; weft keeps
 * vocab_size rows, as many as the (padded) token list it writes, which llama.cpp requires.
 *
 * Tensors are streamed: one is read, converted and written at a time.
 */
import { open } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { WeftError } from '../errors.js';
import { loadModelConfig, type ModelConfig } from './config.js';
import { bf16ToF32, f16ToF32, f32ToF16 } from './dtype.js';
import { ggmlType, meta, writeGguf, type GgufMeta, type GgufTensorToWrite, type WriteGgufResult } from './gguf.js';
import { archMetadata, ggufExportArch } from './gguf-export-keys.js';
import { gemmaQueryPreAttnScalar } from './gguf-llamacpp.js';
import { readVocab, vocabMetadata } from './gguf-vocab.js';
import { native } from './native.js';
import { readSafetensorsIndex, type DType, type TensorInfo } from './safetensors.js';
import { resolveWeights } from './weights.js';

export type GgufOutType = 'f32' | 'f16' | 'q8_0' | 'q4_0' | 'q4_k_m' | 'q5_k_m';

/** llama_ftype of each output type (general.file_type). */
export const GGUF_FILE_TYPE: Record<GgufOutType, number> = { f32: 0, f16: 1, q4_0: 2, q8_0: 7, q4_k_m: 15, q5_k_m: 17 };
const BASE_TYPE: Record<GgufOutType, string> = { f32: 'F32', f16: 'F16', q8_0: 'Q8_0', q4_0: 'Q4_0', q4_k_m: 'Q4_K', q5_k_m: 'Q5_K' };

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
  } else if (kMix && name.endsWith('.attn_qkv.weight')) {
    type = out === 'q4_k_m' ? 'Q5_K' : 'Q6_K'; // a fused QKV gets one step more
  }
  // Rows that do not fill whole blocks: llama.cpp falls back to Q5_0 / Q5_1 / Q8_0 (weft: Q8_0), then F16.
  if (ne0 % ggmlType(type)!.blockSize !== 0) type = ne0 % 32 === 0 ? 'Q8_0' : 'F16';
  return type;
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
  /** general.name (default: the directory's name), as the converter's --model-name. */
  name?: string;
}

export interface ExportGgufResult extends WriteGgufResult {
  /** The ggml type each tensor was written in. */
  tensorTypes: Map<string, string>;
}

/** How a tensor's values change on the way: llama's Q/K row permutation, Gemma's +1 on norms, a factor. */
interface Edit {
  permuteHeads?: number;
  addOne?: boolean;
  scale?: number;
}

/**
 * Writes a GGUF v3 file for llama.cpp from a Hugging Face Llama, Mistral, Qwen2, Qwen3, Gemma 2,
 * Gemma 3 or Phi-3 directory. Matrices are written as `type` (default f16, llama.cpp's mix for the
 * K types); 1-D tensors F32.
 */
export async function exportGguf(hfDir: string, outPath: string, opts: ExportGgufOptions = {}): Promise<ExportGgufResult> {
  const out = opts.type ?? 'f16';
  if (!(out in GGUF_FILE_TYPE)) throw new WeftError('WEFT_BAD_ARGUMENT', `GGUF output type ${out} is not one of ${Object.keys(GGUF_FILE_TYPE).join(', ')}`);
  const c = await loadModelConfig(hfDir);
  if (c.fp8) throw new WeftError('WEFT_UNSUPPORTED_DTYPE', `${hfDir} is an FP8 checkpoint: GGUF export reads float checkpoints only`);
  const arch = ggufExportArch(c);
  const w = resolveWeights(c, await readSafetensorsIndex(hfDir));
  const vocab = await readVocab(hfDir, c);
  const tied = c.tieWordEmbeddings || w.lmHead === w.embed;
  const metadata: Record<string, GgufMeta> = {
    'general.architecture': meta.str(arch),
    'general.name': meta.str(opts.name ?? path.basename(path.resolve(hfDir))),
    'general.file_type': meta.u32(GGUF_FILE_TYPE[out]),
    'general.quantization_version': meta.u32(2),
    ...archMetadata(arch, c, hfDir),
    ...vocabMetadata(vocab),
  };
  const gemma = arch === 'gemma2' || arch === 'gemma3';
  if (arch === 'gemma2' && !tied) throw new WeftError('WEFT_UNSUPPORTED_ARCH', `${hfDir}: llama.cpp's Gemma 2 always ties the output to the embeddings; this checkpoint has its own lm_head`);
  // Gemma: llama.cpp fixes the attention scale (gguf-llamacpp.ts); a checkpoint's other
  // query_pre_attn_scalar is folded into the queries (RoPE is linear): Q * sqrt(fixed / scalar).
  const qScale = gemma ? Math.sqrt(gemmaQueryPreAttnScalar(arch, c.numLayers, c.hiddenSize, c.numHeads, c.headDim) / c.queryPreAttnScalar) : 1;

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
  const add = (name: string, src: TensorInfo, layer: number | null, edit: Edit = {}): void => {
    const type = ggufTensorType(out, name, src.shape, layer, c.numLayers, tied);
    tensorTypes.set(name, type);
    tensors.push({
      name, type, shape: src.shape,
      data: async () => {
        let raw = await readRaw(src);
        if (edit.permuteHeads !== undefined) raw = permuteRows(raw, src.shape[0]!, edit.permuteHeads);
        if (!edit.addOne && (edit.scale ?? 1) === 1) return encode(raw, src.dtype as DType, type);
        const f = toF32(raw, src.dtype as DType);
        for (let i = 0; i < f.length; i++) f[i] = (f[i]! + (edit.addOne ? 1 : 0)) * (edit.scale ?? 1);
        return encode(Buffer.from(f.buffer), 'F32', type);
      },
    });
  };
  const addF32 = (name: string, values: ArrayLike<number>): void => {
    tensorTypes.set(name, 'F32');
    tensors.push({ name, type: 'F32', shape: [values.length], data: new Uint8Array(Float32Array.from(values).buffer) });
  };
  const norm: Edit = { addOne: c.normOffset === 1 }; // Gemma's (1 + w), stored as llama.cpp multiplies

  add('token_embd.weight', w.embed, null);
  if (c.ropeScaling) addF32('rope_freqs.weight', llama3RopeFactors(c));
  if (c.longRope) {
    addF32('rope_factors_long.weight', c.longRope.longFactor);
    addF32('rope_factors_short.weight', c.longRope.shortFactor);
  }
  w.layers.forEach((l, i) => {
    const b = `blk.${i}.`;
    // llama-arch Q/K rows go interleaved (llama.cpp ropes them NORM-style, the others NEOX-style)
    const q: Edit = arch === 'llama' ? { permuteHeads: c.numHeads } : arch === 'gemma2' ? { scale: qScale } : {};
    const k: Edit = arch === 'llama' ? { permuteHeads: c.numKvHeads } : {};
    add(`${b}attn_norm.weight`, l.inputNorm, i, norm);
    const fused = arch === 'phi3'; // the others' fused tensors (weft's plans) go out as q/k/v and gate/up row ranges
    if (fused && l.qkv) {
      add(`${b}attn_qkv.weight`, l.qkv, i);
    } else {
      add(`${b}attn_q.weight`, l.q, i, q);
      add(`${b}attn_k.weight`, l.k, i, k);
      add(`${b}attn_v.weight`, l.v, i);
    }
    if (l.qBias) add(`${b}attn_q.bias`, l.qBias, i, q);
    if (l.kBias) add(`${b}attn_k.bias`, l.kBias, i, k);
    if (l.vBias) add(`${b}attn_v.bias`, l.vBias, i);
    if (l.qNorm) add(`${b}attn_q_norm.weight`, l.qNorm, i, { ...norm, scale: qScale });
    if (l.kNorm) add(`${b}attn_k_norm.weight`, l.kNorm, i, norm);
    add(`${b}attn_output.weight`, l.o, i);
    if (l.oBias) add(`${b}attn_output.bias`, l.oBias, i);
    if (l.attnOutNorm) add(`${b}post_attention_norm.weight`, l.attnOutNorm, i, norm);
    add(`${b}ffn_norm.weight`, l.postNorm, i, norm); // Gemma: the pre-feed-forward norm
    if (fused && l.gateUp) {
      add(`${b}ffn_up.weight`, l.gateUp, i); // Phi-3: gate | up, as llama.cpp's fused SwiGLU splits it
    } else {
      add(`${b}ffn_gate.weight`, l.gate, i);
      add(`${b}ffn_up.weight`, l.up, i);
    }
    add(`${b}ffn_down.weight`, l.down, i);
    if (l.ffnOutNorm) add(`${b}post_ffw_norm.weight`, l.ffnOutNorm, i, norm);
  });
  add('output_norm.weight', w.norm, null, norm);
  // Tied embeddings: no output.weight (llama.cpp then uses token_embd for the LM head).
  if (!tied) add('output.weight', w.lmHead, null);

  try {
    return { ...(await writeGguf(outPath, { metadata, tensors })), tensorTypes };
  } finally {
    for (const fh of files.values()) await fh.close();
  }
}
