/**
 * GGUF files (llama.cpp's model format), read and written.
 *
 * Layout (little-endian; versions 2 and 3 share it, v1 had u32 counts):
 *   "GGUF", u32 version, u64 tensor count, u64 metadata kv count,
 *   kv × (string key, u32 value type, value)          string = u64 byte length + UTF-8 bytes,
 *                                                       array = u32 item type + u64 count + items,
 *   tensor info × (string name, u32 n_dims, u64 ne[n_dims] (ne0 innermost), u32 ggml type,
 *                  u64 offset relative to the data section, a multiple of the alignment),
 *   padding to `general.alignment` (default 32), then the data section.
 *
 * The reader never trusts a length: every count, string length and tensor extent is checked
 * against the bytes left in the file before anything is allocated or read, and the header is
 * read through a bounded window, never the whole file. Every fault is a WeftError naming the
 * file, the field or tensor, and the byte offset.
 */
import { open, rename, rm, stat } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import { WeftError } from '../errors.js';
import type { TensorDType, TensorInfo } from './safetensors.js';

export const GGUF_MAGIC = 0x46554747; // "GGUF" read as a little-endian u32
export const GGUF_VERSION = 3;
export const GGUF_DEFAULT_ALIGNMENT = 32;
/** llama.cpp's GGML_MAX_NAME: a tensor name must be shorter. */
export const GGUF_MAX_NAME_BYTES = 64;
const MAX_DIMS = 4;
const MAX_ARRAY_NESTING = 8;

/** Metadata value types. */
export enum GgufType {
  UINT8 = 0, INT8 = 1, UINT16 = 2, INT16 = 3, UINT32 = 4, INT32 = 5, FLOAT32 = 6, BOOL = 7,
  STRING = 8, ARRAY = 9, UINT64 = 10, INT64 = 11, FLOAT64 = 12,
}
export type GgufScalarType = Exclude<GgufType, GgufType.ARRAY>;
export type GgufScalar = number | bigint | boolean | string;
/** A metadata value as a plain JS value: u64/i64 as bigint, other numbers as number. */
export type GgufValue = GgufScalar | GgufValue[];
/** A metadata value with its GGUF type (what the writer takes and the reader keeps). */
export type GgufMeta =
  | { type: GgufScalarType; value: GgufScalar }
  | { type: GgufType.ARRAY; itemType: GgufScalarType; value: GgufScalar[] }
  | { type: GgufType.ARRAY; itemType: GgufType.ARRAY; value: GgufMeta[] };

/** Bytes of one fixed-size scalar (strings: the minimum, an empty one). */
const SCALAR_BYTES: Record<GgufScalarType, number> = {
  [GgufType.UINT8]: 1, [GgufType.INT8]: 1, [GgufType.UINT16]: 2, [GgufType.INT16]: 2, [GgufType.UINT32]: 4,
  [GgufType.INT32]: 4, [GgufType.FLOAT32]: 4, [GgufType.BOOL]: 1, [GgufType.STRING]: 8, [GgufType.UINT64]: 8,
  [GgufType.INT64]: 8, [GgufType.FLOAT64]: 8,
};

/** Typed metadata constructors for the writer: meta.u32(32), meta.strings(['a', 'b']), ... */
export const meta = {
  u8: (value: number): GgufMeta => ({ type: GgufType.UINT8, value }),
  i8: (value: number): GgufMeta => ({ type: GgufType.INT8, value }),
  u16: (value: number): GgufMeta => ({ type: GgufType.UINT16, value }),
  i16: (value: number): GgufMeta => ({ type: GgufType.INT16, value }),
  u32: (value: number): GgufMeta => ({ type: GgufType.UINT32, value }),
  i32: (value: number): GgufMeta => ({ type: GgufType.INT32, value }),
  f32: (value: number): GgufMeta => ({ type: GgufType.FLOAT32, value }),
  bool: (value: boolean): GgufMeta => ({ type: GgufType.BOOL, value }),
  str: (value: string): GgufMeta => ({ type: GgufType.STRING, value }),
  u64: (value: number | bigint): GgufMeta => ({ type: GgufType.UINT64, value: BigInt(value) }),
  i64: (value: number | bigint): GgufMeta => ({ type: GgufType.INT64, value: BigInt(value) }),
  f64: (value: number): GgufMeta => ({ type: GgufType.FLOAT64, value }),
  array: (itemType: GgufScalarType, value: GgufScalar[]): GgufMeta => ({ type: GgufType.ARRAY, itemType, value }),
  arrays: (value: GgufMeta[]): GgufMeta => ({ type: GgufType.ARRAY, itemType: GgufType.ARRAY, value }),
  strings: (value: string[]): GgufMeta => ({ type: GgufType.ARRAY, itemType: GgufType.STRING, value }),
  i32s: (value: number[]): GgufMeta => ({ type: GgufType.ARRAY, itemType: GgufType.INT32, value }),
  f32s: (value: number[]): GgufMeta => ({ type: GgufType.ARRAY, itemType: GgufType.FLOAT32, value }),
};

/** The plain value of a typed metadata value. */
export function plainValue(m: GgufMeta): GgufValue {
  if (m.type !== GgufType.ARRAY) return m.value;
  if (m.itemType === GgufType.ARRAY) return (m.value as GgufMeta[]).map(plainValue);
  return m.value as GgufScalar[];
}

// ---------------------------------------------------------------------------------------------
// ggml tensor types
// ---------------------------------------------------------------------------------------------

export interface GgmlTypeInfo {
  id: number;
  name: string;
  /** Elements per block. */
  blockSize: number;
  /** Bytes per block. */
  blockBytes: number;
}

/** Every ggml type a GGUF file may hold (ggml.h enum ggml_type, sizes from ggml.c type_traits). */
const GGML_TYPE_LIST: [number, string, number, number][] = [
  [0, 'F32', 1, 4], [1, 'F16', 1, 2], [2, 'Q4_0', 32, 18], [3, 'Q4_1', 32, 20], [6, 'Q5_0', 32, 22],
  [7, 'Q5_1', 32, 24], [8, 'Q8_0', 32, 34], [9, 'Q8_1', 32, 36], [10, 'Q2_K', 256, 84], [11, 'Q3_K', 256, 110],
  [12, 'Q4_K', 256, 144], [13, 'Q5_K', 256, 176], [14, 'Q6_K', 256, 210], [15, 'Q8_K', 256, 292],
  [16, 'IQ2_XXS', 256, 66], [17, 'IQ2_XS', 256, 74], [18, 'IQ3_XXS', 256, 98], [19, 'IQ1_S', 256, 50],
  [20, 'IQ4_NL', 32, 18], [21, 'IQ3_S', 256, 110], [22, 'IQ2_S', 256, 82], [23, 'IQ4_XS', 256, 136],
  [24, 'I8', 1, 1], [25, 'I16', 1, 2], [26, 'I32', 1, 4], [27, 'I64', 1, 8], [28, 'F64', 1, 8],
  [29, 'IQ1_M', 256, 56], [30, 'BF16', 1, 2], [34, 'TQ1_0', 256, 54], [35, 'TQ2_0', 256, 66],
  [39, 'MXFP4', 32, 17], [40, 'NVFP4', 64, 36], [41, 'Q1_0', 128, 18], [42, 'Q2_0', 64, 18],
];
const GGML_TYPES_BY_ID = new Map<number, GgmlTypeInfo>(GGML_TYPE_LIST.map(([id, name, blockSize, blockBytes]) => [id, { id, name, blockSize, blockBytes }]));
const GGML_TYPES_BY_NAME = new Map<string, GgmlTypeInfo>([...GGML_TYPES_BY_ID.values()].map((t) => [t.name, t]));

/** The tensor types weft computes with (TensorDType). */
export const GGUF_SUPPORTED_TYPES: readonly TensorDType[] = ['F32', 'F16', 'BF16', 'Q8_0', 'Q4_0', 'Q4_K', 'Q5_K', 'Q6_K'];

export function ggmlType(nameOrId: string | number): GgmlTypeInfo | undefined {
  return typeof nameOrId === 'number' ? GGML_TYPES_BY_ID.get(nameOrId) : GGML_TYPES_BY_NAME.get(nameOrId);
}

function isSupported(name: string): name is TensorDType {
  return (GGUF_SUPPORTED_TYPES as readonly string[]).includes(name);
}

export function unsupportedTypeError(file: string, tensor: string, typeName: string): WeftError {
  return new WeftError(
    'WEFT_UNSUPPORTED_DTYPE',
    `${file}: tensor "${tensor}" has type ${typeName}, which weft does not support (supported: ${GGUF_SUPPORTED_TYPES.join(', ')})`,
  );
}

/** Bytes of a tensor of `type` and `shape` (any order), or a message saying why it has none. */
export function ggmlTensorBytes(type: GgmlTypeInfo, shape: readonly number[]): number | string {
  const ne0 = shape[shape.length - 1] ?? 1;
  if (ne0 % type.blockSize !== 0) return `rows of ${ne0} elements are not a multiple of ${type.name}'s block of ${type.blockSize}`;
  const numel = shape.reduce((a, b) => a * b, 1);
  return (numel / type.blockSize) * type.blockBytes;
}

// ---------------------------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------------------------

export interface GgufTensor {
  name: string;
  /** ggml type name ('Q4_K', 'F16', ... also unsupported ones when allowed). */
  typeName: string;
  ggmlType: number;
  /** weft's dtype; null only for an unsupported type read with `allowUnsupportedTypes`. */
  dtype: TensorDType | null;
  /** Hugging Face order (outermost first): [rows, cols] for a matrix. */
  shape: number[];
  /** GGUF order (ne0 innermost first). */
  ne: number[];
  numElements: number;
  /** Absolute byte offset in the file. */
  offset: number;
  nbytes: number;
}

export interface GgufFile {
  path: string;
  version: 2 | 3;
  fileSize: number;
  alignment: number;
  /** Absolute offset of the data section. */
  dataOffset: number;
  /** Metadata as plain values, in file order. */
  metadata: Map<string, GgufValue>;
  /** Metadata with GGUF types, in file order. */
  kv: Map<string, GgufMeta>;
  tensors: GgufTensor[];
}

export interface ReadGgufOptions {
  /** List tensors of types weft cannot compute with (dtype null) instead of failing. */
  allowUnsupportedTypes?: boolean;
}

/** Header bytes read from the file at a time. */
const WINDOW_BYTES = 1 << 20;

/** A cursor over the file's header through a bounded window of bytes. */
class HeaderReader {
  pos = 0;
  private win: Buffer = Buffer.alloc(0);
  private winStart = 0;

  constructor(private readonly fh: FileHandle, readonly size: number, readonly file: string) {}

  get left(): number {
    return this.size - this.pos;
  }

  fail(what: string, at = this.pos): WeftError {
    return new WeftError('WEFT_MODEL_FORMAT', `${this.file}: ${what} (at byte ${at})`);
  }

  ready(n: number): boolean {
    return this.pos + n <= this.winStart + this.win.length;
  }

  /** Makes the next n bytes readable; n is checked against the bytes left in the file first. */
  async need(n: number, what: string): Promise<void> {
    if (this.ready(n)) return;
    if (n > this.left) throw this.fail(`truncated file: ${what} needs ${n} bytes, ${this.left} left`);
    const len = Math.min(Math.max(n, WINDOW_BYTES), this.left);
    const buf = Buffer.alloc(len);
    for (let done = 0; done < len; ) {
      const { bytesRead } = await this.fh.read(buf, done, len - done, this.pos + done);
      if (bytesRead === 0) throw this.fail(`file shrank while reading ${what}`);
      done += bytesRead;
    }
    this.win = buf;
    this.winStart = this.pos;
  }

  private at(n: number): number {
    const o = this.pos - this.winStart;
    this.pos += n;
    return o;
  }
  u8(): number { return this.win[this.at(1)]; }
  i8(): number { return this.win.readInt8(this.at(1)); }
  u16(): number { return this.win.readUInt16LE(this.at(2)); }
  i16(): number { return this.win.readInt16LE(this.at(2)); }
  u32(): number { return this.win.readUInt32LE(this.at(4)); }
  i32(): number { return this.win.readInt32LE(this.at(4)); }
  f32(): number { return this.win.readFloatLE(this.at(4)); }
  u64(): bigint { return this.win.readBigUInt64LE(this.at(8)); }
  i64(): bigint { return this.win.readBigInt64LE(this.at(8)); }
  f64(): number { return this.win.readDoubleLE(this.at(8)); }
  utf8(n: number): string {
    const o = this.at(n);
    return this.win.toString('utf8', o, o + n);
  }

  /** A u64 count or length, checked to be at most `max` before it becomes a number. */
  count(max: number, what: string): number {
    const at = this.pos;
    const n = this.u64();
    if (n > BigInt(max)) throw this.fail(`${what} is ${n}, more than the file can hold (at most ${max})`, at);
    return Number(n);
  }

  /** The next string when its length and bytes are already in the window (the common case), else undefined. */
  tryString(): string | undefined {
    if (!this.ready(8)) return undefined;
    const o = this.pos - this.winStart;
    const n = this.win.readUInt32LE(o);
    if (this.win.readUInt32LE(o + 4) !== 0 || n > this.left - 8 || !this.ready(8 + n)) return undefined;
    this.pos += 8;
    return this.utf8(n);
  }

  async string(what: string): Promise<string> {
    await this.need(8, `${what} length`);
    const n = this.count(this.left - 8, `${what} length`);
    await this.need(n, what);
    return this.utf8(n);
  }
}

async function readScalar(r: HeaderReader, type: GgufScalarType, what: string): Promise<GgufScalar> {
  if (type === GgufType.STRING) return r.string(what);
  await r.need(SCALAR_BYTES[type], what);
  return takeScalar(r, type, what);
}

/** Reads a fixed-size scalar whose bytes are ready. */
function takeScalar(r: HeaderReader, type: Exclude<GgufScalarType, GgufType.STRING>, what: string): GgufScalar {
  switch (type) {
    case GgufType.UINT8: return r.u8();
    case GgufType.INT8: return r.i8();
    case GgufType.UINT16: return r.u16();
    case GgufType.INT16: return r.i16();
    case GgufType.UINT32: return r.u32();
    case GgufType.INT32: return r.i32();
    case GgufType.FLOAT32: return r.f32();
    case GgufType.UINT64: return r.u64();
    case GgufType.INT64: return r.i64();
    case GgufType.FLOAT64: return r.f64();
    case GgufType.BOOL: {
      const b = r.u8();
      if (b > 1) throw r.fail(`${what}: bool byte is ${b}, not 0 or 1`, r.pos - 1);
      return b === 1;
    }
  }
}

async function readValueType(r: HeaderReader, what: string): Promise<GgufType> {
  await r.need(4, `${what} type`);
  const at = r.pos;
  const t = r.u32();
  if (t > GgufType.FLOAT64) throw r.fail(`${what} has unknown value type ${t}`, at);
  return t;
}

async function readArray(r: HeaderReader, what: string, depth: number): Promise<GgufMeta> {
  if (depth > MAX_ARRAY_NESTING) throw r.fail(`${what}: arrays nested deeper than ${MAX_ARRAY_NESTING}`);
  const itemType = await readValueType(r, `${what} item`);
  await r.need(8, `${what} count`);
  // Every item takes at least its minimum size: a count the rest of the file cannot hold is refused here.
  const minItem = itemType === GgufType.ARRAY ? 12 : SCALAR_BYTES[itemType];
  const n = r.count(Math.floor(r.left / minItem), `${what} count`);
  if (itemType === GgufType.ARRAY) {
    const items: GgufMeta[] = [];
    for (let i = 0; i < n; i++) items.push(await readArray(r, `${what}[${i}]`, depth + 1));
    return { type: GgufType.ARRAY, itemType, value: items };
  }
  const items: GgufScalar[] = [];
  if (itemType === GgufType.STRING) {
    for (let i = 0; i < n; i++) items.push(r.tryString() ?? (await r.string(`${what}[${i}]`)));
  } else {
    const size = SCALAR_BYTES[itemType];
    for (let i = 0; i < n; i++) {
      if (!r.ready(size)) await r.need(size, `${what}[${i}]`);
      items.push(takeScalar(r, itemType, `${what}[${i}]`));
    }
  }
  return { type: GgufType.ARRAY, itemType, value: items };
}

async function readHeaderStart(r: HeaderReader): Promise<{ version: 2 | 3; numTensors: number; numKv: number }> {
  if (r.size < 24) throw r.fail(`truncated file: ${r.size} bytes, a GGUF header needs 24`, 0);
  await r.need(24, 'header');
  const magic = r.u32();
  if (magic !== GGUF_MAGIC) {
    const shown = JSON.stringify(Buffer.from([magic & 0xff, (magic >>> 8) & 0xff, (magic >>> 16) & 0xff, magic >>> 24]).toString('latin1'));
    throw r.fail(`not a GGUF file: magic ${shown}, expected "GGUF"`, 0);
  }
  const version = r.u32();
  if ((version & 0xffff) === 0 && version !== 0) {
    throw r.fail(`big-endian (byte-swapped) GGUF file: version reads as 0x${version.toString(16)}; weft reads little-endian GGUF only`, 4);
  }
  if (version === 1) throw r.fail('GGUF version 1 is not supported (versions 2 and 3 are)', 4);
  if (version !== 2 && version !== 3) throw r.fail(`unknown GGUF version ${version} (versions 2 and 3 are supported)`, 4);
  // Each tensor info takes at least 8 + 1 + 4 + 8 + 4 + 8 bytes, each kv at least 8 + 1 + 4 + 1.
  const numTensors = r.count(Math.floor(r.left / 33), 'tensor count');
  const numKv = r.count(Math.floor(r.left / 14), 'metadata kv count');
  return { version, numTensors, numKv };
}

async function readMetadata(r: HeaderReader, numKv: number): Promise<Map<string, GgufMeta>> {
  const kv = new Map<string, GgufMeta>();
  for (let i = 0; i < numKv; i++) {
    const at = r.pos;
    const key = await r.string(`metadata key #${i}`);
    if (key.length === 0) throw r.fail(`metadata key #${i} is empty`, at);
    if (kv.has(key)) throw r.fail(`duplicate metadata key "${key}"`, at);
    const type = await readValueType(r, `metadata "${key}"`);
    const value = type === GgufType.ARRAY ? await readArray(r, `metadata "${key}"`, 1) : { type, value: await readScalar(r, type, `metadata "${key}"`) };
    kv.set(key, value);
  }
  return kv;
}

function readAlignment(r: HeaderReader, kv: Map<string, GgufMeta>): number {
  const a = kv.get('general.alignment');
  if (a === undefined) return GGUF_DEFAULT_ALIGNMENT;
  if (a.type !== GgufType.UINT32) throw r.fail(`general.alignment has type ${GgufType[a.type]}, expected UINT32`, 0);
  const n = a.value as number;
  if (n === 0 || (n & (n - 1)) !== 0) throw r.fail(`general.alignment ${n} is not a power of two`, 0);
  return n;
}

interface RawTensorInfo { name: string; ne: number[]; type: GgmlTypeInfo; relOffset: bigint; at: number }

async function readTensorInfo(r: HeaderReader, i: number, names: Set<string>, opts: ReadGgufOptions): Promise<RawTensorInfo> {
  const at = r.pos;
  const name = await r.string(`tensor #${i} name`);
  if (name.length === 0) throw r.fail(`tensor #${i} has an empty name`, at);
  if (Buffer.byteLength(name) >= GGUF_MAX_NAME_BYTES) throw r.fail(`tensor name "${name.slice(0, 80)}" is ${Buffer.byteLength(name)} bytes (must be under ${GGUF_MAX_NAME_BYTES})`, at);
  if (names.has(name)) throw r.fail(`duplicate tensor name "${name}"`, at);
  names.add(name);
  await r.need(4, `tensor "${name}" n_dims`);
  const nDims = r.u32();
  if (nDims < 1 || nDims > MAX_DIMS) throw r.fail(`tensor "${name}" has ${nDims} dimensions (1 to ${MAX_DIMS} allowed)`, r.pos - 4);
  await r.need(8 * nDims + 4 + 8, `tensor "${name}" info`);
  const ne: number[] = [];
  let numel = 1n;
  for (let d = 0; d < nDims; d++) {
    const dimAt = r.pos;
    const n = r.u64();
    numel *= n;
    if (n === 0n || numel > BigInt(Number.MAX_SAFE_INTEGER)) {
      throw r.fail(`tensor "${name}" dimension ${d} is ${n}: ${n === 0n ? 'empty' : 'the element count passes 2^53'}`, dimAt);
    }
    ne.push(Number(n));
  }
  const typeAt = r.pos;
  const typeId = r.u32();
  const type = GGML_TYPES_BY_ID.get(typeId);
  if (!type) throw r.fail(`tensor "${name}" has unknown ggml type id ${typeId}`, typeAt);
  if (!isSupported(type.name) && !opts.allowUnsupportedTypes) throw unsupportedTypeError(r.file, name, type.name);
  return { name, ne, type, relOffset: r.u64(), at };
}

function placeTensor(r: HeaderReader, t: RawTensorInfo, dataOffset: number, alignment: number): GgufTensor {
  const nbytes = ggmlTensorBytes(t.type, [...t.ne].reverse());
  if (typeof nbytes === 'string') throw r.fail(`tensor "${t.name}" (${t.type.name}, ne [${t.ne.join(', ')}]): ${nbytes}`, t.at);
  if (t.relOffset % BigInt(alignment) !== 0n) throw r.fail(`tensor "${t.name}" data offset ${t.relOffset} is not a multiple of the alignment ${alignment}`, t.at);
  const end = BigInt(dataOffset) + t.relOffset + BigInt(nbytes);
  if (end > BigInt(r.size)) {
    throw r.fail(`tensor "${t.name}" (${nbytes} bytes at data offset ${t.relOffset}) runs past the end of the file (${r.size} bytes)`, t.at);
  }
  return {
    name: t.name,
    typeName: t.type.name,
    ggmlType: t.type.id,
    dtype: isSupported(t.type.name) ? t.type.name : null,
    shape: [...t.ne].reverse(),
    ne: t.ne,
    numElements: t.ne.reduce((a, b) => a * b, 1),
    offset: dataOffset + Number(t.relOffset),
    nbytes,
  };
}

function checkNoOverlap(r: HeaderReader, tensors: GgufTensor[]): void {
  const sorted = [...tensors].sort((a, b) => a.offset - b.offset);
  for (let i = 1; i < sorted.length; i++) {
    const prev = sorted[i - 1];
    if (prev.offset + prev.nbytes > sorted[i].offset) {
      throw r.fail(`tensors "${prev.name}" and "${sorted[i].name}" overlap in the data section`, sorted[i].offset);
    }
  }
}

/**
 * Reads a GGUF file's header: metadata and tensor table, each tensor placed and checked to lie
 * inside the file. Tensor data is not read (the engine maps it in place).
 */
export async function readGguf(file: string, opts: ReadGgufOptions = {}): Promise<GgufFile> {
  let fh: FileHandle;
  try {
    fh = await open(file, 'r');
  } catch (e) {
    throw new WeftError('WEFT_MODEL_NOT_FOUND', `GGUF file ${file} is missing or unreadable (${(e as NodeJS.ErrnoException).code ?? e})`, { cause: e });
  }
  try {
    const st = await fh.stat();
    if (!st.isFile()) throw new WeftError('WEFT_MODEL_NOT_FOUND', `${file} is not a file`);
    const r = new HeaderReader(fh, st.size, file);
    const { version, numTensors, numKv } = await readHeaderStart(r);
    const kv = await readMetadata(r, numKv);
    const alignment = readAlignment(r, kv);
    const names = new Set<string>();
    const raw: RawTensorInfo[] = [];
    for (let i = 0; i < numTensors; i++) raw.push(await readTensorInfo(r, i, names, opts));
    const dataOffset = Math.ceil(r.pos / alignment) * alignment;
    const tensors = raw.map((t) => placeTensor(r, t, dataOffset, alignment));
    checkNoOverlap(r, tensors);
    const metadata = new Map<string, GgufValue>();
    for (const [k, v] of kv) metadata.set(k, plainValue(v));
    return { path: file, version, fileSize: st.size, alignment, dataOffset, metadata, kv, tensors };
  } finally {
    await fh.close();
  }
}

/** The tensors as weft's TensorInfo (file, absolute offset, bytes), for mapping them in place. */
export function ggufTensorInfos(g: GgufFile): Map<string, TensorInfo> {
  const out = new Map<string, TensorInfo>();
  for (const t of g.tensors) {
    if (t.dtype === null) throw unsupportedTypeError(g.path, t.name, t.typeName);
    out.set(t.name, { name: t.name, file: g.path, dtype: t.dtype, shape: t.shape, offset: t.offset, nbytes: t.nbytes });
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------------------------

export interface GgufTensorToWrite {
  name: string;
  /** A ggml type name: 'F32', 'F16', 'BF16', 'Q8_0', 'Q4_K', ... */
  type: string;
  /** Hugging Face order (outermost first). */
  shape: readonly number[];
  /** The encoded bytes, or a function producing them (called once, in file order). */
  data: Uint8Array | (() => Promise<Uint8Array>);
}

export interface WriteGgufOptions {
  /** Typed values, in the order they are written. */
  metadata: Map<string, GgufMeta> | Record<string, GgufMeta>;
  tensors: readonly GgufTensorToWrite[];
  /** Data alignment (default 32, or general.alignment when the metadata has it). */
  alignment?: number;
}

export interface WriteGgufResult {
  path: string;
  bytes: number;
  tensorCount: number;
  dataOffset: number;
}

type FixedType = Exclude<GgufScalarType, GgufType.STRING>;

/** Ranges of the integer types up to 32 bits, and of the 64-bit ones (as bigint). */
const INT_RANGES: Partial<Record<FixedType, [number, number]>> = {
  [GgufType.UINT8]: [0, 0xff], [GgufType.INT8]: [-0x80, 0x7f], [GgufType.UINT16]: [0, 0xffff],
  [GgufType.INT16]: [-0x8000, 0x7fff], [GgufType.UINT32]: [0, 0xffffffff], [GgufType.INT32]: [-0x80000000, 0x7fffffff],
};
const INT64_RANGES: Partial<Record<FixedType, [bigint, bigint]>> = {
  [GgufType.UINT64]: [0n, 2n ** 64n - 1n], [GgufType.INT64]: [-(2n ** 63n), 2n ** 63n - 1n],
};

const WRITE_SCALAR: Record<FixedType, (b: Buffer, v: never, at: number) => unknown> = {
  [GgufType.UINT8]: (b, v: number, at) => b.writeUInt8(v, at),
  [GgufType.INT8]: (b, v: number, at) => b.writeInt8(v, at),
  [GgufType.UINT16]: (b, v: number, at) => b.writeUInt16LE(v, at),
  [GgufType.INT16]: (b, v: number, at) => b.writeInt16LE(v, at),
  [GgufType.UINT32]: (b, v: number, at) => b.writeUInt32LE(v, at),
  [GgufType.INT32]: (b, v: number, at) => b.writeInt32LE(v, at),
  [GgufType.FLOAT32]: (b, v: number, at) => b.writeFloatLE(v, at),
  [GgufType.BOOL]: (b, v: boolean, at) => b.writeUInt8(v ? 1 : 0, at),
  [GgufType.UINT64]: (b, v: number | bigint, at) => b.writeBigUInt64LE(BigInt(v), at),
  [GgufType.INT64]: (b, v: number | bigint, at) => b.writeBigInt64LE(BigInt(v), at),
  [GgufType.FLOAT64]: (b, v: number, at) => b.writeDoubleLE(v, at),
};

function validScalar(type: GgufScalarType, v: GgufScalar): boolean {
  if (type === GgufType.STRING) return typeof v === 'string';
  if (type === GgufType.BOOL) return typeof v === 'boolean';
  if (type === GgufType.FLOAT32 || type === GgufType.FLOAT64) return typeof v === 'number';
  const range = INT_RANGES[type];
  if (range) return typeof v === 'number' && Number.isInteger(v) && v >= range[0] && v <= range[1];
  const [lo, hi] = INT64_RANGES[type]!;
  const big = typeof v === 'bigint' ? v : typeof v === 'number' && Number.isInteger(v) ? BigInt(v) : null;
  return big !== null && big >= lo && big <= hi;
}

/** Growing header bytes. */
class HeaderWriter {
  private buf = Buffer.alloc(1 << 16);
  length = 0;

  /** Reserves n bytes at the end and returns where they start (the buffer may be replaced). */
  private room(n: number): number {
    if (this.length + n > this.buf.length) {
      const next = Buffer.alloc(Math.max(this.buf.length * 2, this.length + n));
      this.buf.copy(next, 0, 0, this.length);
      this.buf = next;
    }
    const at = this.length;
    this.length += n;
    return at;
  }
  u32(v: number): void {
    const at = this.room(4);
    this.buf.writeUInt32LE(v, at);
  }
  u64(v: bigint | number): void {
    const at = this.room(8);
    if (typeof v === 'bigint') this.buf.writeBigUInt64LE(v, at);
    else {
      this.buf.writeUInt32LE(v % 2 ** 32, at);
      this.buf.writeUInt32LE(Math.floor(v / 2 ** 32), at + 4);
    }
  }
  string(s: string): void {
    const n = Buffer.byteLength(s);
    this.u64(n);
    const at = this.room(n);
    this.buf.write(s, at, 'utf8');
  }
  scalar(type: GgufScalarType, v: GgufScalar, what: string): void {
    if (!validScalar(type, v)) throw new WeftError('WEFT_BAD_ARGUMENT', `${what}: ${String(v)} is not a valid ${GgufType[type]}`);
    if (type === GgufType.STRING) {
      this.string(v as string);
      return;
    }
    const at = this.room(SCALAR_BYTES[type]);
    WRITE_SCALAR[type](this.buf, v as never, at);
  }
  meta(m: GgufMeta, what: string): void {
    this.u32(m.type);
    if (m.type === GgufType.ARRAY) this.arrayBody(m, what);
    else this.scalar(m.type, m.value, what);
  }
  /** Item type, count and items (an array nested in an array has no type tag of its own). */
  private arrayBody(m: GgufMeta & { type: GgufType.ARRAY }, what: string): void {
    this.u32(m.itemType);
    this.u64(m.value.length);
    if (m.itemType !== GgufType.ARRAY) {
      for (const v of m.value as GgufScalar[]) this.scalar(m.itemType, v, what);
      return;
    }
    (m.value as GgufMeta[]).forEach((item, i) => {
      if (item.type !== GgufType.ARRAY) throw new WeftError('WEFT_BAD_ARGUMENT', `${what}[${i}]: an array of arrays holds a ${GgufType[item.type]}`);
      this.arrayBody(item, `${what}[${i}]`);
    });
  }
  bytes(): Buffer {
    return this.buf.subarray(0, this.length);
  }
}

interface PlannedTensor { t: GgufTensorToWrite; type: GgmlTypeInfo; ne: number[]; nbytes: number; relOffset: number }

function badArg(msg: string): WeftError {
  return new WeftError('WEFT_BAD_ARGUMENT', `writeGguf: ${msg}`);
}

function resolveAlignment(kv: Map<string, GgufMeta>, asked: number | undefined): number {
  const given = kv.get('general.alignment');
  let alignment = asked;
  if (given) {
    if (given.type !== GgufType.UINT32) throw badArg('general.alignment must be a UINT32');
    if (asked !== undefined && asked !== given.value) throw badArg(`alignment ${asked} differs from general.alignment ${String(given.value)}`);
    alignment = given.value as number;
  } else if (asked !== undefined && asked !== GGUF_DEFAULT_ALIGNMENT) {
    kv.set('general.alignment', meta.u32(asked));
  }
  alignment ??= GGUF_DEFAULT_ALIGNMENT;
  if (!Number.isInteger(alignment) || alignment <= 0 || (alignment & (alignment - 1)) !== 0) throw badArg(`alignment ${alignment} is not a power of two`);
  return alignment;
}

function planTensors(tensors: readonly GgufTensorToWrite[], alignment: number): { planned: PlannedTensor[]; dataBytes: number } {
  const names = new Set<string>();
  let off = 0;
  const planned = tensors.map((t) => {
    if (!t.name || Buffer.byteLength(t.name) >= GGUF_MAX_NAME_BYTES) throw badArg(`tensor name "${t.name}" must have 1 to ${GGUF_MAX_NAME_BYTES - 1} bytes`);
    if (names.has(t.name)) throw badArg(`duplicate tensor name "${t.name}"`);
    names.add(t.name);
    const type = ggmlType(t.type);
    if (!type) throw badArg(`tensor "${t.name}": unknown ggml type ${t.type}`);
    if (t.shape.length < 1 || t.shape.length > MAX_DIMS || !t.shape.every((d) => Number.isSafeInteger(d) && d >= 1)) {
      throw badArg(`tensor "${t.name}": shape [${t.shape.join(', ')}] must have 1 to ${MAX_DIMS} positive dimensions`);
    }
    const nbytes = ggmlTensorBytes(type, t.shape);
    if (typeof nbytes === 'string') throw badArg(`tensor "${t.name}": ${nbytes}`);
    const p = { t, type, ne: [...t.shape].reverse(), nbytes, relOffset: off };
    off = Math.ceil((off + nbytes) / alignment) * alignment;
    return p;
  });
  return { planned, dataBytes: off };
}

function headerBytes(kv: Map<string, GgufMeta>, planned: PlannedTensor[]): Buffer {
  const w = new HeaderWriter();
  w.u32(GGUF_MAGIC);
  w.u32(GGUF_VERSION);
  w.u64(planned.length);
  w.u64(kv.size);
  for (const [key, value] of kv) {
    if (!key) throw badArg('empty metadata key');
    w.string(key);
    w.meta(value, `metadata "${key}"`);
  }
  for (const p of planned) {
    w.string(p.t.name);
    w.u32(p.ne.length);
    for (const d of p.ne) w.u64(d);
    w.u32(p.type.id);
    w.u64(p.relOffset);
  }
  return w.bytes();
}

/**
 * Writes a GGUF v3 file: the header, then each tensor's bytes in turn (a tensor given as a
 * function is produced only when its turn comes, so one tensor is in memory at a time). The file
 * appears under its name only once complete.
 */
export async function writeGguf(file: string, opts: WriteGgufOptions): Promise<WriteGgufResult> {
  const kv = new Map(opts.metadata instanceof Map ? opts.metadata : Object.entries(opts.metadata));
  const alignment = resolveAlignment(kv, opts.alignment);
  const { planned, dataBytes } = planTensors(opts.tensors, alignment);
  const header = headerBytes(kv, planned);
  const dataOffset = Math.ceil(header.length / alignment) * alignment;
  const tmp = `${file}.tmp-${process.pid}-${Math.random().toString(36).slice(2)}`;
  const fh = await open(tmp, 'w');
  try {
    await fh.write(header, 0, header.length, 0);
    let pos = header.length;
    const padTo = async (target: number): Promise<void> => {
      if (target > pos) await fh.write(Buffer.alloc(target - pos), 0, target - pos, pos);
      pos = target;
    };
    for (const p of planned) {
      await padTo(dataOffset + p.relOffset);
      const data = typeof p.t.data === 'function' ? await p.t.data() : p.t.data;
      if (data.byteLength !== p.nbytes) {
        throw badArg(`tensor "${p.t.name}" (${p.type.name} [${p.t.shape.join(', ')}]) has ${data.byteLength} bytes of data, expected ${p.nbytes}`);
      }
      await fh.write(data, 0, data.byteLength, pos);
      pos += data.byteLength;
    }
    await padTo(dataOffset + dataBytes);
    await fh.close();
    await rename(tmp, file);
    return { path: file, bytes: (await stat(file)).size, tensorCount: planned.length, dataOffset };
  } catch (e) {
    await fh.close().catch(() => {});
    await rm(tmp, { force: true });
    throw e;
  }
}
