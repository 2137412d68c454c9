/**
 * safetensors headers: reading (single file, sharded index, or a directory of *.safetensors)
 * and a small writer. Only header bytes are read; tensor data stays on disk.
 *
 * File layout: u64 little-endian N, then N bytes of JSON
 *   { "<name>": { "dtype": "F16", "shape": [..], "data_offsets": [begin, end] }, "__metadata__": {..} }
 * then the data section; offsets are relative to the start of the data section (8 + N).
 */
import { open, readFile, readdir, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { WeftError } from '../errors.js';

export type DType = 'F32' | 'F16' | 'BF16';

/**
 * What a tensor of a model file may hold: plain floats, FP8 E4M3 (FP8 checkpoints: its scales are
 * tensors of their own, src/engine/fp8.ts), or ggml's block formats (GGUF files).
 */
export type TensorDType = DType | 'F8_E4M3' | 'Q8_0' | 'Q4_0' | 'Q4_K' | 'Q5_K' | 'Q6_K';

export interface TensorInfo {
  name: string;
  file: string;
  dtype: TensorDType;
  shape: number[];
  /** absolute byte offset in file (8 + header length + data_offsets[0]) */
  offset: number;
  nbytes: number;
}

export const DTYPE_BYTES: Record<DType, number> = { F32: 4, F16: 2, BF16: 2 };
/** Bytes per element of the dtypes a safetensors checkpoint may hold. */
const ELEMENT_BYTES: Record<string, number> = { ...DTYPE_BYTES, F8_E4M3: 1 };

/** dtypes the safetensors format defines (used to tell "unsupported" from "garbage"). */
const KNOWN_DTYPES = new Set([
  'BOOL', 'U8', 'I8', 'F8_E5M2', 'F8_E4M3', 'F8_E8M0', 'F4', 'F6_E2M3', 'F6_E3M2',
  'I16', 'U16', 'F16', 'BF16', 'I32', 'U32', 'F32', 'I64', 'U64', 'F64', 'C64',
]);

export const MAX_HEADER_BYTES = 100 * 1024 * 1024;

function fmtErr(file: string, msg: string): WeftError {
  return new WeftError('WEFT_MODEL_FORMAT', `${file}: ${msg}`);
}

/** Reads and validates one safetensors file's header. Returns its tensors in header order. */
export async function readSafetensorsHeader(file: string): Promise<TensorInfo[]> {
  let fh;
  try {
    fh = await open(file, 'r');
  } catch (e) {
    throw new WeftError('WEFT_MODEL_NOT_FOUND', `safetensors file ${file} is missing or unreadable`, { cause: e });
  }
  try {
    const size = (await fh.stat()).size;
    if (size < 8) throw fmtErr(file, `truncated safetensors file (${size} bytes, need at least 8 for the header length)`);
    const lenBuf = Buffer.alloc(8);
    await readExactly(fh, lenBuf, 0, file);
    const n64 = lenBuf.readBigUInt64LE(0);
    if (n64 > BigInt(MAX_HEADER_BYTES)) {
      throw fmtErr(file, `safetensors header length ${n64} exceeds the ${MAX_HEADER_BYTES}-byte limit (corrupt file?)`);
    }
    const n = Number(n64);
    if (n < 2) throw fmtErr(file, `safetensors header length ${n} is too small for a JSON object`);
    if (n > size - 8) {
      throw fmtErr(file, `truncated safetensors file: header length ${n} but only ${size - 8} bytes follow the length prefix`);
    }
    const hdrBuf = Buffer.alloc(n);
    await readExactly(fh, hdrBuf, 8, file);
    let json: unknown;
    try {
      // headers may be space-padded at the end; JSON.parse tolerates trailing whitespace
      json = JSON.parse(hdrBuf.toString('utf8'));
    } catch (e) {
      throw new WeftError('WEFT_MODEL_FORMAT', `${file}: safetensors header is not valid JSON (${(e as Error).message})`, {
        cause: e,
      });
    }
    return parseHeader(json, file, 8 + n, size - 8 - n);
  } finally {
    await fh.close();
  }
}

async function readExactly(
  fh: import('node:fs/promises').FileHandle,
  buf: Buffer,
  position: number,
  file: string,
): Promise<void> {
  let done = 0;
  while (done < buf.length) {
    const { bytesRead } = await fh.read(buf, done, buf.length - done, position + done);
    if (bytesRead === 0) throw fmtErr(file, `unexpected end of file while reading the safetensors header`);
    done += bytesRead;
  }
}

function parseHeader(json: unknown, file: string, dataStart: number, dataLen: number): TensorInfo[] {
  if (typeof json !== 'object' || json === null || Array.isArray(json)) {
    throw fmtErr(file, 'safetensors header is not a JSON object');
  }
  const out: TensorInfo[] = [];
  const ranges: { begin: number; end: number; name: string }[] = [];
  for (const [name, raw] of Object.entries(json as Record<string, unknown>)) {
    if (name === '__metadata__') {
      if (raw !== null && (typeof raw !== 'object' || Array.isArray(raw))) {
        throw fmtErr(file, 'safetensors "__metadata__" must be an object of strings');
      }
      continue;
    }
    if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) {
      throw fmtErr(file, `tensor "${name}": header entry is not an object`);
    }
    const e = raw as Record<string, unknown>;
    const dtype = e.dtype;
    if (typeof dtype !== 'string') throw fmtErr(file, `tensor "${name}": missing or non-string "dtype"`);
    if (!KNOWN_DTYPES.has(dtype)) throw fmtErr(file, `tensor "${name}": unknown dtype "${dtype}"`);
    const shape = e.shape;
    if (!Array.isArray(shape) || !shape.every((d) => typeof d === 'number' && Number.isSafeInteger(d) && d >= 0)) {
      throw fmtErr(file, `tensor "${name}": "shape" must be an array of non-negative integers`);
    }
    const offs = e.data_offsets;
    if (
      !Array.isArray(offs) ||
      offs.length !== 2 ||
      !offs.every((d) => typeof d === 'number' && Number.isSafeInteger(d) && d >= 0)
    ) {
      throw fmtErr(file, `tensor "${name}": "data_offsets" must be [begin, end] non-negative integers`);
    }
    const [begin, end] = offs as [number, number];
    if (end < begin) throw fmtErr(file, `tensor "${name}": data_offsets end ${end} < begin ${begin}`);
    if (end > dataLen) {
      throw fmtErr(
        file,
        `tensor "${name}": data_offsets [${begin}, ${end}] run past the data section (${dataLen} bytes; truncated file?)`,
      );
    }
    const elementBytes = ELEMENT_BYTES[dtype];
    if (elementBytes === undefined) {
      throw new WeftError(
        'WEFT_UNSUPPORTED_DTYPE',
        `${file}: tensor "${name}" has dtype ${dtype}; only F32, F16, BF16 and F8_E4M3 (FP8 checkpoints) are supported`,
      );
    }
    const numel = (shape as number[]).reduce((a, b) => a * b, 1);
    const expect = numel * elementBytes;
    if (end - begin !== expect) {
      throw fmtErr(
        file,
        `tensor "${name}": data_offsets [${begin}, ${end}] hold ${end - begin} bytes but shape [${(shape as number[]).join(', ')}] × ${dtype} needs ${expect}`,
      );
    }
    ranges.push({ begin, end, name });
    out.push({ name, file, dtype: dtype as TensorDType, shape: [...(shape as number[])], offset: dataStart + begin, nbytes: end - begin });
  }
  ranges.sort((a, b) => a.begin - b.begin || a.end - b.end);
  let maxEnd = 0;
  let maxName = '';
  for (const r of ranges) {
    if (r.end === r.begin) continue; // empty tensors occupy no bytes
    if (r.begin < maxEnd) throw fmtErr(file, `tensors "${maxName}" and "${r.name}" overlap in the data section`);
    maxEnd = r.end;
    maxName = r.name;
  }
  return out;
}

async function exists(p: string): Promise<boolean> {
  try {
    await stat(p);
    return true;
  } catch {
    return false;
  }
}

function addAll(map: Map<string, TensorInfo>, infos: TensorInfo[]): void {
  for (const t of infos) {
    const prev = map.get(t.name);
    if (prev) {
      throw new WeftError(
        'WEFT_MODEL_FORMAT',
        `${t.file}: tensor "${t.name}" is also present in ${prev.file} (duplicate tensor name)`,
      );
    }
    map.set(t.name, t);
  }
}

/**
 * Reads the tensor table of a model directory: `model.safetensors`, or the shards named by
 * `model.safetensors.index.json` ("weight_map"), or every `*.safetensors` in the directory.
 */
export async function readSafetensorsIndex(dir: string): Promise<Map<string, TensorInfo>> {
  let st;
  try {
    st = await stat(dir);
  } catch (e) {
    throw new WeftError('WEFT_MODEL_NOT_FOUND', `model directory ${dir} does not exist or is unreadable`, { cause: e });
  }
  if (!st.isDirectory()) throw new WeftError('WEFT_MODEL_NOT_FOUND', `model path ${dir} is not a directory`);

  const map = new Map<string, TensorInfo>();
  const single = path.join(dir, 'model.safetensors');
  const indexFile = path.join(dir, 'model.safetensors.index.json');

  if (await exists(single)) {
    addAll(map, await readSafetensorsHeader(single));
    return map;
  }

  if (await exists(indexFile)) {
    let json: unknown;
    try {
      json = JSON.parse(await readFile(indexFile, 'utf8'));
    } catch (e) {
      throw new WeftError('WEFT_MODEL_FORMAT', `${indexFile}: invalid JSON (${(e as Error).message})`, { cause: e });
    }
    const wm = (json as { weight_map?: unknown } | null)?.weight_map;
    if (typeof wm !== 'object' || wm === null || Array.isArray(wm)) {
      throw new WeftError('WEFT_MODEL_FORMAT', `${indexFile}: missing or non-object field "weight_map"`);
    }
    const shards = new Set<string>();
    for (const [name, shard] of Object.entries(wm as Record<string, unknown>)) {
      if (typeof shard !== 'string' || shard.length === 0 || shard.includes('/') || shard.includes('\\') || shard === '..') {
        throw new WeftError('WEFT_MODEL_FORMAT', `${indexFile}: field "weight_map.${name}" must be a shard file name`);
      }
      shards.add(shard);
    }
    for (const shard of [...shards].sort()) {
      const f = path.join(dir, shard);
      if (!(await exists(f))) {
        throw new WeftError('WEFT_MODEL_NOT_FOUND', `${indexFile} names shard ${shard}, but ${f} does not exist`);
      }
      addAll(map, await readSafetensorsHeader(f));
    }
    for (const [name, shard] of Object.entries(wm as Record<string, string>)) {
      const t = map.get(name);
      if (!t) {
        throw new WeftError('WEFT_MODEL_FORMAT', `${indexFile}: weight_map lists tensor "${name}" in ${shard}, but that shard's header lacks it`);
      }
      if (path.basename(t.file) !== shard) {
        throw new WeftError('WEFT_MODEL_FORMAT', `${indexFile}: weight_map puts tensor "${name}" in ${shard}, but it is in ${path.basename(t.file)}`);
      }
    }
    return map;
  }

  let names: string[];
  try {
    names = (await readdir(dir)).filter((n) => n.endsWith('.safetensors')).sort();
  } catch (e) {
    throw new WeftError('WEFT_MODEL_NOT_FOUND', `model directory ${dir} is unreadable`, { cause: e });
  }
  if (names.length === 0) {
    throw new WeftError(
      'WEFT_MODEL_NOT_FOUND',
      `no weights in ${dir}: expected model.safetensors, model.safetensors.index.json or *.safetensors files`,
    );
  }
  for (const n of names) addAll(map, await readSafetensorsHeader(path.join(dir, n)));
  return map;
}

export interface TensorToWrite {
  name: string;
  dtype: DType | string;
  shape: number[];
  data: Uint8Array;
}

/** Like TensorToWrite, but the bytes are produced on demand (one tensor in memory at a time). */
export interface LazyTensorToWrite {
  name: string;
  dtype: DType;
  shape: number[];
  data: () => Uint8Array;
}

/** Builds the padded JSON header (data 8-byte aligned: the header is padded with spaces). */
function encodeHeader(
  entries: { name: string; dtype: string; shape: number[]; nbytes: number }[],
  metadata?: Record<string, string>,
): { header: Buffer; dataBytes: number } {
  const header: Record<string, unknown> = {};
  if (metadata && Object.keys(metadata).length > 0) header.__metadata__ = metadata;
  let off = 0;
  for (const t of entries) {
    if (t.name === '__metadata__' || Object.prototype.hasOwnProperty.call(header, t.name)) {
      throw new WeftError('WEFT_BAD_ARGUMENT', `writeSafetensors: duplicate or reserved tensor name "${t.name}"`);
    }
    header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [off, off + t.nbytes] };
    off += t.nbytes;
  }
  let hdr = Buffer.from(JSON.stringify(header), 'utf8');
  const pad = (8 - ((8 + hdr.length) % 8)) % 8;
  if (pad) hdr = Buffer.concat([hdr, Buffer.alloc(pad, 0x20)]);
  const out = Buffer.alloc(8 + hdr.length);
  out.writeBigUInt64LE(BigInt(hdr.length), 0);
  hdr.copy(out, 8);
  return { header: out, dataBytes: off };
}

/** Serializes tensors (in the given order) to safetensors bytes. */
export function encodeSafetensors(tensors: TensorToWrite[], metadata?: Record<string, string>): Uint8Array {
  const { header, dataBytes } = encodeHeader(
    tensors.map((t) => ({ name: t.name, dtype: t.dtype, shape: t.shape, nbytes: t.data.byteLength })),
    metadata,
  );
  const out = new Uint8Array(header.length + dataBytes);
  out.set(header, 0);
  let p = header.length;
  for (const t of tensors) {
    out.set(t.data, p);
    p += t.data.byteLength;
  }
  return out;
}

/** Writes a safetensors file (tensors in the given order). */
export async function writeSafetensors(
  file: string,
  tensors: TensorToWrite[],
  metadata?: Record<string, string>,
): Promise<void> {
  await writeFile(file, encodeSafetensors(tensors, metadata));
}

/** Writes a safetensors file, asking each tensor for its bytes only when it is written. Returns the data size. */
export async function writeSafetensorsLazy(
  file: string,
  tensors: LazyTensorToWrite[],
  metadata?: Record<string, string>,
): Promise<number> {
  const sized = tensors.map((t) => ({
    name: t.name,
    dtype: t.dtype,
    shape: t.shape,
    nbytes: t.shape.reduce((a, b) => a * b, 1) * DTYPE_BYTES[t.dtype],
  }));
  const { header, dataBytes } = encodeHeader(sized, metadata);
  const fh = await open(file, 'w');
  try {
    await fh.write(header);
    for (let i = 0; i < tensors.length; i++) {
      const bytes = tensors[i].data();
      if (bytes.byteLength !== sized[i].nbytes) {
        throw new WeftError(
          'WEFT_BAD_ARGUMENT',
          `writeSafetensorsLazy: tensor "${tensors[i].name}" produced ${bytes.byteLength} bytes, expected ${sized[i].nbytes}`,
        );
      }
      await fh.write(bytes);
    }
  } finally {
    await fh.close();
  }
  return dataBytes;
}
