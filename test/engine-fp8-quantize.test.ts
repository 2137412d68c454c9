/**
 * src/engine/fp8-quantize.ts: the FP8 checkpoint writer (the CUDA backend's --quantize fp8 rule,
 * per row, written as compressed-tensors per channel).
 *
 * 1. The E4M3 conversion against an independent bit-level one (round to nearest even on the f32's
 *    mantissa bits, saturating), as __nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3) does.
 * 2. Rows' scales and codes against hand-computed values.
 * 3. Written checkpoints of the transformers fixtures (f32, bf16, biases) load on the CPU with the
 *    logits of an F32 model holding the dequantized weights (fp8 × scale), within 1e-5.
 * 4. An FP8-representable model (each row fp8 values × a power of two, one element at ±448 × it)
 *    round-trips with zero change: same codes, same scales, same logits.
 */
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, test } from 'vitest';
import { loadModelConfig } from '../src/engine/config.js';
import { encodeFloats, f32ToBits, f32ToFp8e4m3, fp8e4m3ToF32, readTensorBytes, readTensorF64 } from '../src/engine/dtype.js';
import { dequantizeRowsFp8, quantizeRowsFp8, writeFp8Checkpoint } from '../src/engine/fp8-quantize.js';
import { readSafetensorsIndex, writeSafetensors, type TensorToWrite } from '../src/engine/safetensors.js';
import { cpuLogits, maxRelError, row } from './helpers/models.js';

const ROOT = join(import.meta.dirname, 'fixtures', 'hf');
const tmp = mkdtempSync(join(tmpdir(), 'weft-fp8q-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));
let dirCount = 0;
const freshDir = () => join(tmp, `d${dirCount++}`);

const LINEAR = /\.(q|k|v|o|gate|up|down)_proj\.weight$/;

/** E4M3 of an f32 by its bits: 3 mantissa bits kept, round to nearest even, saturating at 448. */
function fp8ByBits(x: number): number {
  const b = f32ToBits(x);
  const sign = (b >>> 24) & 0x80;
  const exp = ((b >>> 23) & 0xff) - 127;
  if (((b >>> 23) & 0xff) === 0xff) return (b & 0x7fffff) ? 0x7f : sign | 0x7e;
  let code: number;
  if (exp < -6) {
    // subnormal E4M3: multiples of 2^-9; |x| × 2^9 is exact in a double, round half to even
    const v = Math.abs(Math.fround(x)) * 512;
    const fl = Math.floor(v);
    code = v - fl > 0.5 || (v - fl === 0.5 && fl % 2 === 1) ? fl + 1 : fl;
  } else {
    const mant = b & 0x7fffff;
    const kept = mant >>> 20;
    const rest = mant & 0xfffff;
    code = ((exp + 7) << 3) | kept;
    if (rest > 0x80000 || (rest === 0x80000 && (kept & 1))) code++; // a carry moves to the next binade: still right
  }
  return sign | Math.min(code, 0x7e);
}

test('f32ToFp8e4m3 rounds to nearest even and saturates, as the bit-level conversion does', () => {
  const values: number[] = [0, -0, 448, -448, 449, 463.9, 464, 480, 1e9, -1e30, Infinity, -Infinity, 2 ** -10, 2 ** -12, 3 * 2 ** -11];
  for (let c = 0; c < 0x7e; c++) {
    const lo = fp8e4m3ToF32(c), hi = fp8e4m3ToF32(c + 1), mid = (lo + hi) / 2;
    values.push(mid, Math.fround(mid * (1 + 2 ** -23)), Math.fround(mid * (1 - 2 ** -23)) || 2 ** -149, -mid);
  }
  let seed = 12345;
  const rand = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
  for (let i = 0; i < 100_000; i++) values.push(Math.fround((rand() - 0.5) * 2 ** (Math.floor(rand() * 30) - 16)));
  for (const v of values) expect(f32ToFp8e4m3(v), `${v}`).toBe(fp8ByBits(v));
  // ties: 17 lies between 16 (mantissa 0) and 18 (mantissa 1), 19 between 18 and 20 (mantissa 2)
  expect(f32ToFp8e4m3(17)).toBe(0x58);
  expect(f32ToFp8e4m3(19)).toBe(0x5a);
  expect(f32ToFp8e4m3(1e6)).toBe(0x7e);
  expect(f32ToFp8e4m3(-1e6)).toBe(0xfe);
});

test('a row\'s scale and codes, by hand', () => {
  const K = 5;
  const w = [
    3.5, -1, 0.1, 0.0078125, 7, // m = 7: scale 7 / 448 = 2^-6; w / scale = 224, -64, 6.4, 0.5, 448
    1, 0.3, 0, -0, 0.25, // m = 1: scale fround(1 / 448); 0.3 / scale = 134.4 -> 128
    448, 17, 19, -9, 2 ** -9, // scale 1: ties 17 -> 16, 19 -> 20; 2^-9 is the smallest subnormal
    0, 0, 0, 0, 0, // a zero row: scale 1
  ];
  const q = quantizeRowsFp8(w, 4, K);
  expect([...q.scales]).toEqual([2 ** -6, Math.fround(1 / 448), 1, 1]);
  expect([...q.codes]).toEqual([
    0x76, 0xe8, 0x4d, 0x30, 0x7e, // 224 = 1.75·2^7, -64 = -2^6, 6.4 -> 6.5 = 1.625·2^2, 0.5 = 2^-1, 448
    0x7e, 0x70, 0x00, 0x80, 0x6e, // 1/scale rounds to 448; 134.4 -> 128 = 2^7; 0.25 / scale = 112 = 1.75·2^6
    0x7e, 0x58, 0x5a, 0xd1, 0x01,
    0, 0, 0, 0, 0,
  ]);
  expect([...dequantizeRowsFp8(q, 4, K)].slice(0, 5)).toEqual([3.5, -1, 0.1015625, 0.0078125, 7]);
  // rounded to the GPU's weight type first (then the row's max): 1 + 2^-9 is exact in f16, 1 in bf16; 1 + 2^-12 is 1 in both
  const scaleOf = (r: number[], round?: 'f16' | 'bf16') => quantizeRowsFp8(r, 1, r.length, round).scales[0];
  expect(scaleOf([1 + 2 ** -9, 0.5], 'f16')).toBe(Math.fround((1 + 2 ** -9) / 448));
  expect(scaleOf([1 + 2 ** -9, 0.5], 'bf16')).toBe(Math.fround(1 / 448));
  expect(scaleOf([1 + 2 ** -12, 0.5], 'f16')).toBe(Math.fround(1 / 448));
  expect(scaleOf([1 + 2 ** -12, 0.5])).toBe(Math.fround(Math.fround(1 + 2 ** -12) / 448));
});

const logits = cpuLogits;

const inputsOf = (name: string): number[][] => (JSON.parse(readFileSync(join(ROOT, name, 'logits.json'), 'utf8')) as { inputs: number[][] }).inputs;

/** The written checkpoint's weights as F32 (fp8 × scale) with the rest unchanged, and its config without quantization_config. */
async function f32Twin(fp8Dir: string): Promise<string> {
  const tensors = await readSafetensorsIndex(fp8Dir);
  const out: TensorToWrite[] = [];
  for (const t of tensors.values()) {
    if (t.name.endsWith('.weight_scale')) continue;
    if (t.dtype === 'F8_E4M3') {
      const [N, K] = t.shape as [number, number];
      const scales = Float32Array.from(await readTensorF64(tensors.get(t.name.replace(/\.weight$/, '.weight_scale'))!));
      out.push({ name: t.name, dtype: 'F32', shape: t.shape, data: encodeFloats(dequantizeRowsFp8({ codes: await readTensorBytes(t), scales }, N, K), 'F32') });
    } else {
      out.push({ name: t.name, dtype: t.dtype, shape: t.shape, data: await readTensorBytes(t) });
    }
  }
  const { quantization_config: _q, ...config } = JSON.parse(readFileSync(join(fp8Dir, 'config.json'), 'utf8')) as Record<string, unknown>;
  const dir = freshDir();
  mkdirSync(dir);
  await writeSafetensors(join(dir, 'model.safetensors'), out);
  writeFileSync(join(dir, 'config.json'), JSON.stringify(config));
  return dir;
}

describe.each([
  ['llama', 'f16'], // f32 weights: the GPU holds them as f16
  ['llama_bf16', 'bf16'],
  ['qwen2', 'f16'], // q/k/v biases, tied embeddings
])('writeFp8Checkpoint(%s)', (name, round) => {
  test(`every layer matrix per row (rounded to ${round}), loading gives the logits of its dequantized F32 twin`, async () => {
    const src = join(ROOT, name);
    const out = freshDir();
    const res = await writeFp8Checkpoint(src, out);
    expect(res.round).toBe(round);
    const config = await loadModelConfig(out);
    expect(config.fp8).toMatchObject({ method: 'compressed-tensors', block: [1, 0], scaleSuffix: 'weight_scale' });
    const source = await readSafetensorsIndex(src);
    const written = await readSafetensorsIndex(out);
    const linear = [...source.values()].filter((t) => LINEAR.test(t.name));
    expect(res.quantized.sort()).toEqual(linear.map((t) => t.name).sort());
    expect(linear.length).toBe(7 * config.numLayers);
    for (const t of linear) {
      const w = written.get(t.name)!;
      const s = written.get(t.name.replace(/\.weight$/, '.weight_scale'))!;
      expect([w.dtype, s.dtype, s.shape]).toEqual(['F8_E4M3', 'F32', [t.shape[0], 1]]);
      const q = quantizeRowsFp8(await readTensorF64(t), t.shape[0]!, t.shape[1]!, round as 'f16' | 'bf16');
      expect(await readTensorBytes(w)).toEqual(q.codes);
      expect(Float32Array.from(await readTensorF64(s))).toEqual(q.scales);
    }
    for (const t of source.values()) {
      if (!LINEAR.test(t.name)) expect([written.get(t.name)!.dtype, await readTensorBytes(written.get(t.name)!)]).toEqual([t.dtype, await readTensorBytes(t)]);
    }
    const twin = await f32Twin(out);
    for (const tokens of inputsOf(name)) {
      const got = await logits(out, tokens);
      const want = await logits(twin, tokens);
      for (let p = 0; p < tokens.length; p++) expect(maxRelError(row(got, config.vocabSize, p), row(want, config.vocabSize, p)), `position ${p}`).toBeLessThanOrEqual(1e-5);
    }
  });
});

test('an FP8-representable model round-trips with zero change', async () => {
  const src = join(ROOT, 'llama');
  let seed = 7;
  const rand = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
  const tensors: TensorToWrite[] = [];
  const expected = new Map<string, { codes: Uint8Array; scales: Float32Array }>();
  for (const t of (await readSafetensorsIndex(src)).values()) {
    if (!LINEAR.test(t.name)) {
      tensors.push({ name: t.name, dtype: t.dtype, shape: t.shape, data: await readTensorBytes(t) });
      continue;
    }
    const [N, K] = t.shape as [number, number];
    const codes = new Uint8Array(N * K);
    const scales = new Float32Array(N);
    for (let n = 0; n < N; n++) {
      scales[n] = 2 ** (Math.floor(rand() * 10) - 12); // 2^-12 .. 2^-3: every value also exact in f16
      for (let k = 0; k < K; k++) {
        let c = Math.floor(rand() * 256);
        if ((c & 0x7f) === 0x7f) c ^= 1; // not NaN
        codes[n * K + k] = c === 0x80 ? 0 : c; // -0 is written as +0
      }
      codes[n * K + Math.floor(rand() * K)] = rand() < 0.5 ? 0x7e : 0xfe; // ±448 × scale
    }
    expected.set(t.name, { codes, scales });
    tensors.push({ name: t.name, dtype: 'F32', shape: t.shape, data: encodeFloats(dequantizeRowsFp8({ codes, scales }, N, K), 'F32') });
  }
  const plain = freshDir();
  mkdirSync(plain);
  await writeSafetensors(join(plain, 'model.safetensors'), tensors);
  writeFileSync(join(plain, 'config.json'), readFileSync(join(src, 'config.json')));
  const out = freshDir();
  await writeFp8Checkpoint(plain, out); // rounded to f16 first (an f32 model): exact here
  const written = await readSafetensorsIndex(out);
  for (const [name, e] of expected) {
    expect(await readTensorBytes(written.get(name)!)).toEqual(e.codes);
    expect(Float32Array.from(await readTensorF64(written.get(name.replace(/\.weight$/, '.weight_scale'))!))).toEqual(e.scales);
  }
  for (const tokens of inputsOf('llama')) expect(await logits(out, tokens)).toEqual(await logits(plain, tokens));
});

test('a quantized source is refused', async () => {
  await expect(writeFp8Checkpoint(join(ROOT, 'fp8_qwen2_channel'), freshDir())).rejects.toMatchObject({ code: 'WEFT_BAD_ARGUMENT' });
});
