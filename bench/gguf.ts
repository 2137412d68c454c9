/**
 * GGUF v3 export of a Hugging Face Llama-family checkpoint (config.json + safetensors +
 * tokenizer.json), for running the same weights under llama.cpp (bench/llamacpp.ts).
 *
 * Layout facts (GGUF spec, llama.cpp's `gguf` reader):
 *  - header: magic "GGUF", u32 version (3), u64 tensor count, u64 metadata kv count;
 *  - metadata kv: gguf string key (u64 length + UTF-8 bytes), u32 value type, value;
 *  - tensor info: name, u32 n_dims, u64 dims with ne0 = innermost (so an HF row-major
 *    [rows, cols] matrix is written as [cols, rows]), u32 ggml type, u64 offset relative to the
 *    start of the data section (a multiple of general.alignment = 32);
 *  - the data section starts at the first 32-aligned offset after the tensor infos.
 *
 * Q and K projection rows are permuted from HF's rotate_half RoPE layout (pairs (i, i + d/2)) to
 * llama.cpp's interleaved layout (pairs (2i, 2i+1)): per head, rows (2, d/2) -> (d/2, 2).
 *
 * Tensor data is streamed: one tensor is read, converted and written at a time.
 */
import { existsSync } from 'node:fs';
import { open, readFile } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { loadModelConfig, type ModelConfig } from '../src/engine/config.js';
import { DTYPE_BYTES, readSafetensorsIndex, type DType as SafeDType, type TensorInfo as SafeTensor } from '../src/engine/safetensors.js';
import { resolveWeights } from '../src/engine/weights.js';
import { WeftError } from '../src/errors.js';

export const GGUF_MAGIC = 0x46554747; // "GGUF" little-endian
export const GGUF_VERSION = 3;
export const GGUF_ALIGNMENT = 32;

/** GGUF metadata value types. */
export enum GgufType {
  UINT8 = 0, INT8 = 1, UINT16 = 2, INT16 = 3, UINT32 = 4, INT32 = 5, FLOAT32 = 6, BOOL = 7,
  STRING = 8, ARRAY = 9, UINT64 = 10, INT64 = 11, FLOAT64 = 12,
}
/** The ggml tensor types this exporter writes. */
export enum GgmlType { F32 = 0, F16 = 1 }
/** llama_ftype values for general.file_type. */
const FILE_TYPE = { f32: 0, f16: 1 } as const;
/** llama.cpp token types. */
const TOKEN_TYPE = { NORMAL: 1, UNKNOWN: 2, CONTROL: 3, USER_DEFINED: 4, UNUSED: 5, BYTE: 6 } as const;

export type GgufScalar = number | bigint | boolean | string;
export type GgufValue = GgufScalar | GgufScalar[];

// ---------------------------------------------------------------------------------------------
// Checkpoint reading: config.json, safetensors (src/engine loaders) and tokenizer.json
// ---------------------------------------------------------------------------------------------


/** GPT-2 byte-level alphabet: byte -> printable unicode char (the standard bytes_to_unicode table). */
function byteToUnicode(): string[] {
  const bs: number[] = [];
  for (let b = 0x21; b <= 0x7e; b++) bs.push(b);
  for (let b = 0xa1; b <= 0xac; b++) bs.push(b);
  for (let b = 0xae; b <= 0xff; b++) bs.push(b);
  const table: string[] = new Array(256);
  for (const b of bs) table[b] = String.fromCodePoint(b);
  let n = 0;
  for (let b = 0; b < 256; b++) {
    if (table[b] === undefined) table[b] = String.fromCodePoint(256 + n++);
  }
  return table;
}

interface Vocab { tokens: string[]; types: number[]; merges: string[]; bos: number | null; eos: number | null }

/**
 * Vocabulary for tokenizer.ggml.*: from tokenizer.json (BPE model) when present, padded with
 * "[PADn]" (UNUSED) up to the config's vocab_size, which must equal the embedding rows. Without a
 * tokenizer.json a placeholder byte-level vocabulary (256 byte tokens + pads) is written: llama.cpp
 * needs a loadable vocabulary even when the caller feeds token ids directly.
 */
async function readVocab(dir: string, c: ModelConfig): Promise<Vocab> {
  const tokens: (string | undefined)[] = new Array(c.vocabSize).fill(undefined);
  const types: number[] = new Array(c.vocabSize).fill(TOKEN_TYPE.NORMAL);
  let merges: string[] = [];
  let bos = c.bosTokenId;
  let eos: number | null = c.eosTokenIds[0] ?? null;
  const tjPath = path.join(dir, 'tokenizer.json');
  if (existsSync(tjPath)) {
    const tj = JSON.parse(await readFile(tjPath, 'utf8')) as {
      model?: { type?: string; vocab?: Record<string, number>; merges?: (string | [string, string])[] };
      added_tokens?: { id: number; content: string; special?: boolean }[];
    };
    if (!tj.model || (tj.model.type !== undefined && tj.model.type !== 'BPE') || !tj.model.vocab) {
      throw new Error(`${tjPath}: only BPE (GPT-2 byte-level) tokenizers are exported`);
    }
    for (const [tok, id] of Object.entries(tj.model.vocab)) {
      if (id < 0 || id >= c.vocabSize) throw new Error(`${tjPath}: token id ${id} >= vocab_size ${c.vocabSize}`);
      tokens[id] = tok;
    }
    for (const a of tj.added_tokens ?? []) {
      if (a.id < 0 || a.id >= c.vocabSize) throw new Error(`${tjPath}: added token id ${a.id} >= vocab_size ${c.vocabSize}`);
      tokens[a.id] = a.content;
      types[a.id] = a.special ? TOKEN_TYPE.CONTROL : TOKEN_TYPE.USER_DEFINED;
    }
    merges = (tj.model.merges ?? []).map((m) => (typeof m === 'string' ? m : `${m[0]} ${m[1]}`));
    const eot = (tj.added_tokens ?? []).find((a) => a.content === '<|endoftext|>');
    if (eot) {
      bos ??= eot.id;
      eos ??= eot.id;
    }
  } else {
    const b2u = byteToUnicode();
    for (let b = 0; b < 256 && b < c.vocabSize; b++) tokens[b] = b2u[b];
  }
  const out: string[] = new Array(c.vocabSize);
  for (let i = 0; i < c.vocabSize; i++) {
    const t = tokens[i];
    if (t === undefined) {
      out[i] = `[PAD${i}]`;
      types[i] = TOKEN_TYPE.UNUSED;
    } else {
      out[i] = t;
    }
  }
  return { tokens: out, types, merges, bos, eos };
}

// ---------------------------------------------------------------------------------------------
// Numeric conversion
// ---------------------------------------------------------------------------------------------

// f16 conversions are the engine's own (src/engine/dtype.ts), under the names this file's callers use.
export { f32ToF16 as f32ToF16Bits, f16ToF32 as f16BitsToF32 } from '../src/engine/dtype.js';
import { f32ToF16 as f32ToF16Bits, f16ToF32 as f16BitsToF32 } from '../src/engine/dtype.js';

/** Decode a raw little-endian tensor (F32/F16/BF16) to float32. */
function toF32(raw: Buffer, dtype: SafeDType): Float32Array {
  if (dtype === 'F32') {
    const out = new Float32Array(raw.length / 4);
    new Uint8Array(out.buffer).set(raw);
    return out;
  }
  const n = raw.length / 2;
  const out = new Float32Array(n);
  if (dtype === 'BF16') {
    const u = new Uint32Array(out.buffer);
    for (let i = 0; i < n; i++) u[i] = raw.readUInt16LE(2 * i) << 16;
  } else {
    for (let i = 0; i < n; i++) out[i] = f16BitsToF32(raw.readUInt16LE(2 * i));
  }
  return out;
}

/** Encode to the output ggml type; F16 -> F16 is a byte copy. */
function encode(raw: Buffer, dtype: SafeDType, outType: GgmlType): Buffer {
  if (outType === GgmlType.F16 && dtype === 'F16') return raw;
  if (outType === GgmlType.F32 && dtype === 'F32') return raw;
  const f = toF32(raw, dtype);
  if (outType === GgmlType.F32) return Buffer.from(f.buffer, f.byteOffset, f.byteLength);
  const out = Buffer.alloc(f.length * 2);
  for (let i = 0; i < f.length; i++) out.writeUInt16LE(f32ToF16Bits(f[i]), 2 * i);
  return out;
}

/**
 * Permute the rows of a [nHead*headDim, cols] projection from HF rotate_half order to llama.cpp's
 * interleaved order: new row h*d + 2j + s <- old row h*d + s*(d/2) + j.
 */
function permuteRows(raw: Buffer, rows: number, rowBytes: number, nHead: number): Buffer {
  const d = rows / nHead;
  if (!Number.isInteger(d) || d % 2 !== 0) throw new Error(`cannot permute ${rows} rows over ${nHead} heads`);
  const out = Buffer.alloc(raw.length);
  const half = d / 2;
  for (let h = 0; h < nHead; h++) {
    for (let j = 0; j < half; j++) {
      for (let s = 0; s < 2; s++) {
        const dst = h * d + 2 * j + s;
        const src = h * d + s * half + j;
        raw.copy(out, dst * rowBytes, src * rowBytes, (src + 1) * rowBytes);
      }
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// GGUF writing
// ---------------------------------------------------------------------------------------------

class ByteWriter {
  private chunks: Buffer[] = [];
  length = 0;
  private push(b: Buffer): void {
    this.chunks.push(b);
    this.length += b.length;
  }
  u32(v: number): void {
    const b = Buffer.alloc(4);
    b.writeUInt32LE(v >>> 0);
    this.push(b);
  }
  i32(v: number): void {
    const b = Buffer.alloc(4);
    b.writeInt32LE(v);
    this.push(b);
  }
  u64(v: number | bigint): void {
    const b = Buffer.alloc(8);
    b.writeBigUInt64LE(BigInt(v));
    this.push(b);
  }
  f32(v: number): void {
    const b = Buffer.alloc(4);
    b.writeFloatLE(v);
    this.push(b);
  }
  str(s: string): void {
    const b = Buffer.from(s, 'utf8');
    this.u64(b.length);
    this.push(b);
  }
  bytes(b: Buffer): void {
    this.push(b);
  }
  toBuffer(): Buffer {
    return Buffer.concat(this.chunks, this.length);
  }
}

type Meta = { key: string; type: GgufType; value: GgufValue; elemType?: GgufType };

function writeScalar(w: ByteWriter, type: GgufType, v: GgufScalar): void {
  switch (type) {
    case GgufType.UINT32: w.u32(Number(v)); break;
    case GgufType.INT32: w.i32(Number(v)); break;
    case GgufType.FLOAT32: w.f32(Number(v)); break;
    case GgufType.BOOL: w.bytes(Buffer.from([v ? 1 : 0])); break;
    case GgufType.STRING: w.str(String(v)); break;
    case GgufType.UINT64: w.u64(typeof v === 'bigint' ? v : BigInt(Number(v))); break;
    default: throw new Error(`writer does not handle gguf type ${type}`);
  }
}

function writeMeta(w: ByteWriter, m: Meta): void {
  w.str(m.key);
  w.u32(m.type);
  if (m.type === GgufType.ARRAY) {
    const arr = m.value as GgufScalar[];
    w.u32(m.elemType!);
    w.u64(arr.length);
    for (const v of arr) writeScalar(w, m.elemType!, v);
  } else {
    writeScalar(w, m.type, m.value as GgufScalar);
  }
}

interface OutTensor {
  name: string;
  /** GGUF order: ne0 (innermost) first. */
  ne: number[];
  type: GgmlType;
  nbytes: number;
  offset: number;
  /** Produces the encoded bytes (called once, in file order). */
  data: () => Promise<Buffer>;
}

function align(n: number, a = GGUF_ALIGNMENT): number {
  return Math.ceil(n / a) * a;
}

/** llama3 rope scaling as llama.cpp expects it: per-frequency divisors in a rope_freqs.weight tensor. */
function llama3RopeFactors(c: ModelConfig): Float32Array {
  const rs = c.ropeScaling!;
  const half = c.headDim / 2;
  const out = new Float32Array(half);
  const lowWavelen = rs.originalMaxPositionEmbeddings / rs.lowFreqFactor;
  const highWavelen = rs.originalMaxPositionEmbeddings / rs.highFreqFactor;
  for (let i = 0; i < half; i++) {
    const freq = 1 / c.ropeTheta ** ((2 * i) / c.headDim);
    const wavelen = (2 * Math.PI) / freq;
    if (wavelen < highWavelen) out[i] = 1;
    else if (wavelen > lowWavelen) out[i] = rs.factor;
    else {
      const smooth = (rs.originalMaxPositionEmbeddings / wavelen - rs.lowFreqFactor) / (rs.highFreqFactor - rs.lowFreqFactor);
      out[i] = 1 / ((1 - smooth) / rs.factor + smooth);
    }
  }
  return out;
}

export interface ExportGgufResult {
  path: string;
  tensorCount: number;
  bytes: number;
}

/**
 * Write a GGUF v3 ("llama" architecture) file from a Hugging Face Llama/Mistral directory.
 * Matrices are written as `dtype` (default f16); 1-D norm weights are always f32 (as llama.cpp's
 * own converter does).
 */
export async function exportGguf(
  hfDir: string,
  outPath: string,
  opts: { dtype?: 'f16' | 'f32' } = {},
): Promise<ExportGgufResult> {
  const dtype = opts.dtype ?? 'f16';
  const matType = dtype === 'f16' ? GgmlType.F16 : GgmlType.F32;
  const c = await loadModelConfig(hfDir);
  if (c.architecture === 'qwen2' || c.attentionBias) {
    throw new WeftError('WEFT_UNSUPPORTED_ARCH', `${hfDir}: GGUF export handles llama/mistral (no attention biases), not ${c.architecture}`);
  }
  const weights = resolveWeights(c, await readSafetensorsIndex(hfDir));
  const vocab = await readVocab(hfDir, c);

  const fhs = new Map<string, FileHandle>();
  const readRaw = async (t: SafeTensor): Promise<Buffer> => {
    let fh = fhs.get(t.file);
    if (!fh) {
      fh = await open(t.file, 'r');
      fhs.set(t.file, fh);
    }
    const b = Buffer.alloc(t.nbytes);
    const { bytesRead } = await fh.read(b, 0, t.nbytes, t.offset);
    if (bytesRead !== t.nbytes) throw new Error(`${t.file}: short read of ${t.name}`);
    return b;
  };

  const tensors: OutTensor[] = [];
  const add = (name: string, src: SafeTensor, type: GgmlType, permuteHeads?: number): void => {
    const ne = [...src.shape].reverse();
    const numel = src.shape.reduce((a, b) => a * b, 1);
    tensors.push({
      name, ne, type, offset: 0,
      nbytes: numel * (type === GgmlType.F16 ? 2 : 4),
      data: async () => {
        let raw = await readRaw(src);
        if (permuteHeads !== undefined) {
          raw = permuteRows(raw, src.shape[0], src.shape[1] * DTYPE_BYTES[src.dtype as SafeDType], permuteHeads);
        }
        return encode(raw, src.dtype as SafeDType, type);
      },
    });
  };

  add('token_embd.weight', weights.embed, matType);
  if (c.ropeScaling) {
    const rf = llama3RopeFactors(c);
    tensors.push({
      name: 'rope_freqs.weight', ne: [rf.length], type: GgmlType.F32, offset: 0, nbytes: rf.byteLength,
      data: async () => Buffer.from(rf.buffer),
    });
  }
  weights.layers.forEach((l, i) => {
    add(`blk.${i}.attn_norm.weight`, l.inputNorm, GgmlType.F32);
    add(`blk.${i}.attn_q.weight`, l.q, matType, c.numHeads);
    add(`blk.${i}.attn_k.weight`, l.k, matType, c.numKvHeads);
    add(`blk.${i}.attn_v.weight`, l.v, matType);
    add(`blk.${i}.attn_output.weight`, l.o, matType);
    add(`blk.${i}.ffn_norm.weight`, l.postNorm, GgmlType.F32);
    add(`blk.${i}.ffn_gate.weight`, l.gate, matType);
    add(`blk.${i}.ffn_up.weight`, l.up, matType);
    add(`blk.${i}.ffn_down.weight`, l.down, matType);
  });
  add('output_norm.weight', weights.norm, GgmlType.F32);
  // Tied embeddings: no output.weight (llama.cpp then uses token_embd for the LM head).
  if (!c.tieWordEmbeddings && weights.lmHead !== weights.embed) add('output.weight', weights.lmHead, matType);

  const meta: Meta[] = [
    { key: 'general.architecture', type: GgufType.STRING, value: 'llama' },
    { key: 'general.name', type: GgufType.STRING, value: path.basename(path.resolve(hfDir)) },
    { key: 'general.alignment', type: GgufType.UINT32, value: GGUF_ALIGNMENT },
    { key: 'general.file_type', type: GgufType.UINT32, value: FILE_TYPE[dtype] },
    { key: 'llama.vocab_size', type: GgufType.UINT32, value: c.vocabSize },
    { key: 'llama.context_length', type: GgufType.UINT32, value: c.maxPositionEmbeddings },
    { key: 'llama.embedding_length', type: GgufType.UINT32, value: c.hiddenSize },
    { key: 'llama.block_count', type: GgufType.UINT32, value: c.numLayers },
    { key: 'llama.feed_forward_length', type: GgufType.UINT32, value: c.intermediateSize },
    { key: 'llama.rope.dimension_count', type: GgufType.UINT32, value: c.headDim },
    { key: 'llama.attention.head_count', type: GgufType.UINT32, value: c.numHeads },
    { key: 'llama.attention.head_count_kv', type: GgufType.UINT32, value: c.numKvHeads },
    { key: 'llama.attention.key_length', type: GgufType.UINT32, value: c.headDim },
    { key: 'llama.attention.value_length', type: GgufType.UINT32, value: c.headDim },
    { key: 'llama.attention.layer_norm_rms_epsilon', type: GgufType.FLOAT32, value: c.rmsNormEps },
    { key: 'llama.rope.freq_base', type: GgufType.FLOAT32, value: c.ropeTheta },
    { key: 'tokenizer.ggml.model', type: GgufType.STRING, value: 'gpt2' },
    // llama.cpp's name for the GPT-2 pre-tokenizer regex ("gpt2" is rejected as unknown).
    { key: 'tokenizer.ggml.pre', type: GgufType.STRING, value: 'gpt-2' },
    { key: 'tokenizer.ggml.tokens', type: GgufType.ARRAY, elemType: GgufType.STRING, value: vocab.tokens },
    { key: 'tokenizer.ggml.token_type', type: GgufType.ARRAY, elemType: GgufType.INT32, value: vocab.types },
    { key: 'tokenizer.ggml.merges', type: GgufType.ARRAY, elemType: GgufType.STRING, value: vocab.merges },
  ];
  // llama3 rope scaling travels as the rope_freqs.weight tensor (no llama.rope.scaling.* keys).
  if (vocab.bos !== null) meta.push({ key: 'tokenizer.ggml.bos_token_id', type: GgufType.UINT32, value: vocab.bos });
  if (vocab.eos !== null) meta.push({ key: 'tokenizer.ggml.eos_token_id', type: GgufType.UINT32, value: vocab.eos });
  meta.push({ key: 'tokenizer.ggml.add_bos_token', type: GgufType.BOOL, value: false });
  meta.push({ key: 'tokenizer.ggml.add_eos_token', type: GgufType.BOOL, value: false });

  // Header + metadata + tensor infos.
  let off = 0;
  for (const t of tensors) {
    t.offset = off;
    off = align(off + t.nbytes);
  }
  const w = new ByteWriter();
  w.u32(GGUF_MAGIC);
  w.u32(GGUF_VERSION);
  w.u64(tensors.length);
  w.u64(meta.length);
  for (const m of meta) writeMeta(w, m);
  for (const t of tensors) {
    w.str(t.name);
    w.u32(t.ne.length);
    for (const d of t.ne) w.u64(d);
    w.u32(t.type);
    w.u64(t.offset);
  }
  const headerLen = w.length;
  const dataStart = align(headerLen);
  w.bytes(Buffer.alloc(dataStart - headerLen));

  const out = await open(outPath, 'w');
  try {
    let pos = 0;
    const header = w.toBuffer();
    await out.write(header, 0, header.length, pos);
    pos += header.length;
    for (const t of tensors) {
      const target = dataStart + t.offset;
      if (target > pos) {
        await out.write(Buffer.alloc(target - pos), 0, target - pos, pos);
        pos = target;
      }
      const b = await t.data();
      if (b.length !== t.nbytes) throw new Error(`internal: ${t.name} encoded to ${b.length} bytes, expected ${t.nbytes}`);
      await out.write(b, 0, b.length, pos);
      pos += b.length;
    }
    const end = dataStart + off;
    if (end > pos) await out.write(Buffer.alloc(end - pos), 0, end - pos, pos);
    return { path: outPath, tensorCount: tensors.length, bytes: end };
  } finally {
    await out.close();
    for (const fh of fhs.values()) await fh.close();
  }
}

// ---------------------------------------------------------------------------------------------
// GGUF reading (header, metadata and tensor infos only): for tests and sanity checks
// ---------------------------------------------------------------------------------------------

export interface GgufTensorInfo { name: string; ne: number[]; type: number; offset: number }
export interface GgufHeader {
  version: number;
  tensorCount: number;
  metadata: Map<string, GgufValue>;
  tensors: GgufTensorInfo[];
  /** Absolute file offset of the data section. */
  dataOffset: number;
}

/** Parse a GGUF file's header, metadata and tensor infos (tensor data is not read). */
export async function readGgufHeader(file: string): Promise<GgufHeader> {
  const fh = await open(file, 'r');
  try {
    const size = (await fh.stat()).size;
    // Metadata may be large (vocab); read progressively in chunks.
    let buf = Buffer.alloc(0);
    let base = 0; // file offset of buf[0]
    let p = 0; // file offset of the cursor
    const ensure = async (n: number): Promise<void> => {
      if (p + n <= base + buf.length) return;
      const want = Math.max(n, 1 << 20);
      const start = p;
      const len = Math.min(want, size - start);
      if (len < n) throw new Error(`${file}: truncated GGUF header`);
      const nb = Buffer.alloc(len);
      await fh.read(nb, 0, len, start);
      buf = nb;
      base = start;
    };
    const u8 = async () => { await ensure(1); return buf[p++ - base]; };
    const u32 = async () => { await ensure(4); const v = buf.readUInt32LE(p - base); p += 4; return v; };
    const i32 = async () => { await ensure(4); const v = buf.readInt32LE(p - base); p += 4; return v; };
    const u64 = async () => { await ensure(8); const v = buf.readBigUInt64LE(p - base); p += 8; return v; };
    const i64 = async () => { await ensure(8); const v = buf.readBigInt64LE(p - base); p += 8; return v; };
    const f32 = async () => { await ensure(4); const v = buf.readFloatLE(p - base); p += 4; return v; };
    const f64 = async () => { await ensure(8); const v = buf.readDoubleLE(p - base); p += 8; return v; };
    const str = async () => {
      const n = Number(await u64());
      await ensure(n);
      const s = buf.toString('utf8', p - base, p - base + n);
      p += n;
      return s;
    };
    const scalar = async (t: GgufType): Promise<GgufScalar> => {
      switch (t) {
        case GgufType.UINT8: return u8();
        case GgufType.INT8: { const v = await u8(); return v > 127 ? v - 256 : v; }
        case GgufType.UINT16: { await ensure(2); const v = buf.readUInt16LE(p - base); p += 2; return v; }
        case GgufType.INT16: { await ensure(2); const v = buf.readInt16LE(p - base); p += 2; return v; }
        case GgufType.UINT32: return u32();
        case GgufType.INT32: return i32();
        case GgufType.FLOAT32: return f32();
        case GgufType.BOOL: return (await u8()) !== 0;
        case GgufType.STRING: return str();
        case GgufType.UINT64: return u64();
        case GgufType.INT64: return i64();
        case GgufType.FLOAT64: return f64();
        default: throw new Error(`${file}: unknown GGUF value type ${t}`);
      }
    };
    const magic = await u32();
    if (magic !== GGUF_MAGIC) throw new Error(`${file}: not a GGUF file (magic 0x${magic.toString(16)})`);
    const version = await u32();
    const tensorCount = Number(await u64());
    const kvCount = Number(await u64());
    const metadata = new Map<string, GgufValue>();
    for (let i = 0; i < kvCount; i++) {
      const key = await str();
      const t = (await u32()) as GgufType;
      if (t === GgufType.ARRAY) {
        const et = (await u32()) as GgufType;
        const n = Number(await u64());
        const arr: GgufScalar[] = new Array(n);
        for (let j = 0; j < n; j++) arr[j] = await scalar(et);
        metadata.set(key, arr);
      } else {
        metadata.set(key, await scalar(t));
      }
    }
    const tensors: GgufTensorInfo[] = [];
    for (let i = 0; i < tensorCount; i++) {
      const name = await str();
      const nd = await u32();
      const ne: number[] = [];
      for (let d = 0; d < nd; d++) ne.push(Number(await u64()));
      const type = await u32();
      const offset = Number(await u64());
      tensors.push({ name, ne, type, offset });
    }
    const alignment = Number(metadata.get('general.alignment') ?? GGUF_ALIGNMENT);
    return { version, tensorCount, metadata, tensors, dataOffset: align(p, alignment) };
  } finally {
    await fh.close();
  }
}
