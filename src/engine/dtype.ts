/**
 * Float format helpers: f32 <-> f16 and f32 <-> bf16 (round to nearest, ties to even) and
 * reading a tensor's data from its file as Float32Array/Float64Array (tests, reference code).
 */
import { open } from 'node:fs/promises';
import { WeftError } from '../errors.js';
import type { DType, TensorInfo } from './safetensors.js';

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** Bits of the f32 nearest to `x`. */
export function f32ToBits(x: number): number {
  f32[0] = x;
  return u32[0];
}

export function bitsToF32(bits: number): number {
  u32[0] = bits >>> 0;
  return f32[0];
}

/** f32 -> bf16 bits, round to nearest even; NaN stays a (quiet) NaN. */
export function f32ToBf16(x: number): number {
  const b = f32ToBits(x);
  if ((b & 0x7f800000) === 0x7f800000 && (b & 0x007fffff) !== 0) return ((b >>> 16) | 0x0040) & 0xffff;
  const lsb = (b >>> 16) & 1;
  return ((b + 0x7fff + lsb) >>> 16) & 0xffff;
}

export function bf16ToF32(h: number): number {
  return bitsToF32((h & 0xffff) << 16);
}

/** f32 (or any double, rounded to f32 first) -> IEEE half bits, round to nearest even. */
export function f32ToF16(x: number): number {
  const b = f32ToBits(x);
  const sign = (b >>> 16) & 0x8000;
  const exp = (b >>> 23) & 0xff;
  let mant = b & 0x007fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x0200 | (mant >>> 13) : 0); // inf / NaN
  const e = exp - 127 + 15; // rebias
  if (e >= 0x1f) return sign | 0x7c00; // overflow -> inf
  if (e <= 0) {
    // subnormal half (or zero)
    if (e < -10) return sign; // too small: rounds to zero
    mant |= 0x00800000; // implicit 1
    const shift = 14 - e; // 13 + (1 - e)
    const half = 1 << (shift - 1);
    const rest = mant & ((1 << shift) - 1);
    let h = mant >>> shift;
    if (rest > half || (rest === half && (h & 1))) h += 1;
    return sign | h; // a carry into the exponent field is still correct
  }
  let h = (e << 10) | (mant >>> 13);
  const rest = mant & 0x1fff;
  if (rest > 0x1000 || (rest === 0x1000 && (h & 1))) h += 1; // may carry to inf: correct
  return sign | h;
}

export function f16ToF32(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >>> 10) & 0x1f;
  const mant = h & 0x3ff;
  if (exp === 0) return sign * mant * 2 ** -24;
  if (exp === 0x1f) return mant ? NaN : sign * Infinity;
  return sign * (1 + mant / 1024) * 2 ** (exp - 15);
}

/** Encodes numbers as little-endian bytes of the given dtype. */
export function encodeFloats(values: ArrayLike<number>, dtype: DType): Uint8Array {
  const n = values.length;
  if (dtype === 'F32') {
    const a = Float32Array.from(values as ArrayLike<number>);
    return littleEndianBytes(a.buffer, 4);
  }
  const out = new Uint8Array(n * 2);
  const conv = dtype === 'F16' ? f32ToF16 : f32ToBf16;
  for (let i = 0; i < n; i++) {
    const h = conv(values[i]);
    out[2 * i] = h & 0xff;
    out[2 * i + 1] = h >>> 8;
  }
  return out;
}

const LE = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

function littleEndianBytes(buf: ArrayBufferLike, width: number): Uint8Array {
  const u8 = new Uint8Array(buf);
  if (LE) return u8;
  for (let i = 0; i < u8.length; i += width) u8.subarray(i, i + width).reverse();
  return u8;
}

/** Decodes little-endian bytes of `dtype` to float64 values. */
export function decodeFloats(bytes: Uint8Array, dtype: DType): Float64Array {
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (dtype === 'F32') {
    const n = bytes.byteLength >>> 2;
    const out = new Float64Array(n);
    for (let i = 0; i < n; i++) out[i] = dv.getFloat32(4 * i, true);
    return out;
  }
  const n = bytes.byteLength >>> 1;
  const out = new Float64Array(n);
  if (dtype === 'F16') for (let i = 0; i < n; i++) out[i] = f16ToF32(dv.getUint16(2 * i, true));
  else for (let i = 0; i < n; i++) out[i] = bf16ToF32(dv.getUint16(2 * i, true));
  return out;
}

/** Reads a tensor's raw bytes from its file. */
export async function readTensorBytes(t: TensorInfo): Promise<Uint8Array> {
  let fh;
  try {
    fh = await open(t.file, 'r');
  } catch (e) {
    throw new WeftError('WEFT_MODEL_NOT_FOUND', `${t.file} (tensor "${t.name}") is missing or unreadable`, { cause: e });
  }
  try {
    const buf = Buffer.alloc(t.nbytes);
    let done = 0;
    while (done < t.nbytes) {
      const { bytesRead } = await fh.read(buf, done, t.nbytes - done, t.offset + done);
      if (bytesRead === 0) throw new WeftError('WEFT_MODEL_FORMAT', `${t.file}: truncated data for tensor "${t.name}"`);
      done += bytesRead;
    }
    return new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength);
  } finally {
    await fh.close();
  }
}

/** Reads a tensor's values as float64 (exact for F32/F16/BF16). */
export async function readTensorF64(t: TensorInfo): Promise<Float64Array> {
  if (t.dtype !== 'F32' && t.dtype !== 'F16' && t.dtype !== 'BF16') {
    throw new WeftError('WEFT_UNSUPPORTED_DTYPE', `tensor "${t.name}" is ${t.dtype}: read it with the native dequantizer`);
  }
  return decodeFloats(await readTensorBytes(t), t.dtype);
}

/** Reads a tensor's values as float32 (exact for F32/F16/BF16). */
export async function readTensorF32(t: TensorInfo): Promise<Float32Array> {
  return Float32Array.from(await readTensorF64(t));
}

/** OCP FP8 E4M3 bits -> value (exact; 0x7f/0xff are NaN, no infinities). */
export function fp8e4m3ToF32(b: number): number {
  const sign = b & 0x80 ? -1 : 1;
  const exp = (b >>> 3) & 0xf;
  const mant = b & 7;
  if (exp === 0xf && mant === 7) return NaN;
  return exp === 0 ? sign * mant * 2 ** -9 : sign * (1 + mant / 8) * 2 ** (exp - 7);
}

const FP8_POSITIVE = Array.from({ length: 127 }, (_, code) => fp8e4m3ToF32(code)); // codes 0..126, increasing

/** value -> OCP FP8 E4M3 bits, round to nearest even, saturating at ±448 (NaN stays NaN). */
export function f32ToFp8e4m3(x: number): number {
  if (Number.isNaN(x)) return 0x7f;
  const sign = x < 0 || Object.is(x, -0) ? 0x80 : 0;
  const a = Math.abs(x);
  let lo = 0;
  let hi = FP8_POSITIVE.length - 1;
  if (a >= FP8_POSITIVE[hi]!) return sign | hi;
  while (hi - lo > 1) {
    const mid = (lo + hi) >>> 1;
    if (FP8_POSITIVE[mid]! <= a) lo = mid;
    else hi = mid;
  }
  const dLo = a - FP8_POSITIVE[lo]!;
  const dHi = FP8_POSITIVE[hi]! - a;
  return sign | (dLo < dHi || (dLo === dHi && (lo & 1) === 0) ? lo : hi);
}
