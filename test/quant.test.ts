/**
 * ggml block formats (native/src/cpu/quant*.cpp): round-trip error per type, the exact byte
 * layouts (blocks packed by hand here from ggml's layout, independently of the C++), the quantized
 * GEMM's SIMD path against its scalar reference and against a float64 dot product, the
 * invariance of a row's result to batch size and row split, coded errors, and the kernel settings
 * (options.tuning): every candidate gives the same logits.
 */
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { Engine } from '../src/engine/engine.js';
import { exportGguf } from '../src/engine/gguf-export.js';
import { native, type NativeQuantType } from '../src/engine/native.js';
import { TinyModels } from './helpers/models.js';

const q = native().quant;
const BLOCK_TYPES: NativeQuantType[] = ['Q8_0', 'Q4_0', 'Q4_K', 'Q5_K', 'Q6_K'];
const BLOCK: Record<string, number> = { Q8_0: 32, Q4_0: 32, Q4_K: 256, Q5_K: 256, Q6_K: 256 };

function gaussian(n: number, seed: number, scale = 1): Float32Array {
  let s = seed >>> 0;
  const uniform = () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (((t ^ (t >>> 14)) >>> 0) + 0.5) / 4294967296;
  };
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = scale * Math.sqrt(-2 * Math.log(uniform())) * Math.cos(2 * Math.PI * uniform());
  return out;
}

function relRmse(a: Float32Array, b: Float32Array): number {
  let e = 0, s = 0;
  for (let i = 0; i < a.length; i++) {
    e += (a[i]! - b[i]!) ** 2;
    s += a[i]! ** 2;
  }
  return Math.sqrt(e / s);
}

function f16(bits: number): [number, number] {
  return [bits & 0xff, bits >> 8];
}

describe('round trips', () => {
  // Measured on this data (relative RMS error): Q8_0 0.53%, Q4_0 8.0%, Q4_K 7.1%, Q5_K 3.6%,
  // Q6_K 1.8%. Q8_0 is amax/127 steps: step/sqrt(12) = 2.3/127/3.46 = 0.52% of sigma for blocks of 32;
  // each further bit halves the error of the K-quants. Bounds sit ~10% above the measurements.
  const bounds: Record<string, number> = { Q8_0: 0.006, Q4_0: 0.088, Q4_K: 0.078, Q5_K: 0.04, Q6_K: 0.02 };
  const x = gaussian(256 * 64, 7, 0.02);
  for (const type of BLOCK_TYPES) {
    test(`${type}: relative RMS error below ${bounds[type]}`, () => {
      const bytes = q.quantize(type, x);
      expect(bytes.length).toBe(q.rowBytes(type, x.length));
      const err = relRmse(x, q.dequantize(type, bytes, x.length));
      expect(err).toBeLessThan(bounds[type]!);
      expect(err).toBeGreaterThan(bounds[type]! / 4);  // a broken quantizer that copies would pass the bound
    });
  }

  test('plain types convert (F32 exact, F16 and BF16 to their precision)', () => {
    const v = gaussian(64, 3);
    expect(Array.from(q.dequantize('F32', q.quantize('F32', v), 64))).toEqual(Array.from(v));
    expect(relRmse(v, q.dequantize('F16', q.quantize('F16', v), 64))).toBeLessThan(5e-4);
    expect(relRmse(v, q.dequantize('BF16', q.quantize('BF16', v), 64))).toBeLessThan(4e-3);
  });

  test('zeros and a constant block survive', () => {
    for (const type of BLOCK_TYPES) {
      const zeros = new Float32Array(256);
      expect(Array.from(q.dequantize(type, q.quantize(type, zeros), 256)).every((v) => v === 0)).toBe(true);
      const ones = new Float32Array(256).fill(0.5);
      expect(relRmse(ones, q.dequantize(type, q.quantize(type, ones), 256))).toBeLessThan(0.01);
    }
  });
});

describe('block layouts (hand-packed per ggml)', () => {
  test('Q8_0: f16 d, then 32 int8', () => {
    const b = new Uint8Array(34);
    b.set(f16(0x3400), 0);  // 0.25
    for (let j = 0; j < 32; j++) b[2 + j] = (j - 16) & 0xff;
    const y = q.dequantize('Q8_0', b, 32);
    for (let j = 0; j < 32; j++) expect(y[j]).toBe((j - 16) * 0.25);
  });

  test('Q4_0: element j is the low nibble of qs[j], element j + 16 the high one, minus 8', () => {
    const b = new Uint8Array(18);
    b.set(f16(0x3800), 0);  // 0.5
    for (let j = 0; j < 16; j++) b[2 + j] = j | ((15 - j) << 4);
    const y = q.dequantize('Q4_0', b, 32);
    for (let j = 0; j < 16; j++) {
      expect(y[j]).toBe((j - 8) * 0.5);
      expect(y[j + 16]).toBe((15 - j - 8) * 0.5);
    }
  });

  // get_scale_min_k4: j < 4: scale = q[j] & 63, min = q[j + 4] & 63; j >= 4: scale = (q[j + 4] & 15) |
  // (q[j - 4] >> 6) << 4, min = (q[j + 4] >> 4) | (q[j] >> 6) << 4.
  const SC = [1, 2, 3, 4, 33, 45, 60, 63];
  const MN = [0, 5, 10, 15, 20, 40, 50, 63];
  function packScales(): number[] {
    const p = new Array<number>(12).fill(0);
    for (let j = 0; j < 4; j++) {
      p[j] = SC[j]! | ((SC[j + 4]! >> 4) << 6);
      p[j + 4] = MN[j]! | ((MN[j + 4]! >> 4) << 6);
      p[j + 8] = (SC[j + 4]! & 15) | ((MN[j + 4]! & 15) << 4);
    }
    return p;
  }

  test('Q4_K: d, dmin, 12 bytes of 6-bit scales/mins, nibbles by 64-element chunk', () => {
    const b = new Uint8Array(144);
    b.set(f16(0x3c00), 0);  // d = 1
    b.set(f16(0x3800), 2);  // dmin = 0.5
    b.set(packScales(), 4);
    const level = (g: number, l: number) => (l + 3 * g) % 16;
    for (let g = 0; g < 8; g++)
      for (let l = 0; l < 32; l++) b[16 + 32 * (g >> 1) + l]! |= level(g, l) << (g & 1 ? 4 : 0);
    const y = q.dequantize('Q4_K', b, 256);
    for (let g = 0; g < 8; g++)
      for (let l = 0; l < 32; l++) expect(y[32 * g + l]).toBe(SC[g]! * level(g, l) - 0.5 * MN[g]!);
  });

  test('Q5_K: as Q4_K plus bit g of qh[l] as the fifth bit', () => {
    const b = new Uint8Array(176);
    b.set(f16(0x3c00), 0);
    b.set(f16(0x3800), 2);
    b.set(packScales(), 4);
    const level = (g: number, l: number) => (7 * l + 5 * g) % 32;
    for (let g = 0; g < 8; g++)
      for (let l = 0; l < 32; l++) {
        const v = level(g, l);
        b[48 + 32 * (g >> 1) + l]! |= (v & 15) << (g & 1 ? 4 : 0);
        b[16 + l]! |= (v >> 4) << g;
      }
    const y = q.dequantize('Q5_K', b, 256);
    for (let g = 0; g < 8; g++)
      for (let l = 0; l < 32; l++) expect(y[32 * g + l]).toBe(SC[g]! * level(g, l) - 0.5 * MN[g]!);
  });

  test('Q6_K: ql, qh, int8 scales per 16, d last', () => {
    const b = new Uint8Array(210);
    const level = (e: number) => (e * 7 + 3) % 64;  // stored value; the element is level - 32
    for (let e = 0; e < 256; e++) {
      const n = e >> 7, k = (e & 127) >> 5, l = e & 31, v = level(e);
      b[64 * n + 32 * (k & 1) + l]! |= (v & 15) << (k < 2 ? 0 : 4);
      b[128 + 32 * n + l]! |= (v >> 4) << (2 * k);
    }
    for (let s = 0; s < 16; s++) b[192 + s] = (s - 8) & 0xff;
    b.set(f16(0x3000), 208);  // 0.125
    const y = q.dequantize('Q6_K', b, 256);
    for (let e = 0; e < 256; e++) expect(y[e]).toBe(0.125 * ((e >> 4) - 8) * (level(e) - 32));
  });
});

/** Q8_K as the engine quantizes activations: per 256, d = amax/127, round half to even. */
function requantizeQ8K(x: Float32Array): Float32Array {
  const out = new Float32Array(x.length);
  const f = Math.fround;
  for (let b = 0; b < x.length; b += 256) {
    let amax = 0;
    for (let j = 0; j < 256; j++) amax = Math.max(amax, Math.abs(x[b + j]!));
    if (amax === 0) continue;
    const iscale = f(127 / amax), d = f(1 / iscale);
    for (let j = 0; j < 256; j++) {
      const v = f(x[b + j]! * iscale);
      let r = Math.round(v);
      if (r - v === 0.5 && r % 2 !== 0) r -= 1;  // ties to even
      out[b + j] = Math.max(-127, Math.min(127, r)) * d;
    }
  }
  return out;
}

describe('quantized matmul', () => {
  const ROWS = 37, T_MAX = 16;
  const colsOf = (type: string) => (BLOCK[type] === 32 ? 288 : 768);  // 9 blocks of 32: an odd pair for 512-bit kernels
  const cases = BLOCK_TYPES.map((type) => {
    const cols = colsOf(type);
    const w = q.quantize(type, gaussian(ROWS * cols, 11, 0.05));
    const x = gaussian(T_MAX * cols, 13);
    return { type, cols, w, x };
  });

  test('kernel names the SIMD path', () => {
    expect(['avx512-vnni', 'avx512bw', 'avx-vnni', 'avx2', 'scalar', 'emu512']).toContain(q.kernel);
  });

  for (const { type, cols, w, x } of cases) {
    test(`${type}: SIMD equals the scalar reference (K-quants bit for bit, Q8_0/Q4_0 to float rounding)`, () => {
      for (const T of [1, 3, 7, 16]) {
        const xs = x.subarray(0, T * cols);
        const fast = q.matmul(type, w, ROWS, cols, xs, T, false);
        const ref = q.matmul(type, w, ROWS, cols, xs, T, true);
        if (BLOCK[type] === 256) {
          expect(Array.from(fast)).toEqual(Array.from(ref));
        } else {
          let maxRef = 0, maxDiff = 0;
          for (let i = 0; i < ref.length; i++) {
            maxRef = Math.max(maxRef, Math.abs(ref[i]!));
            maxDiff = Math.max(maxDiff, Math.abs(fast[i]! - ref[i]!));
          }
          expect(maxDiff).toBeLessThanOrEqual(1e-5 * maxRef);
        }
      }
    });

    test(`${type}: a row's result is the same bits at T = 1, inside T = 13, and across row splits`, () => {
      const all = q.matmul(type, w, ROWS, cols, x.subarray(0, 13 * cols), 13, false);
      for (const t of [0, 5, 12]) {
        const one = q.matmul(type, w, ROWS, cols, x.subarray(t * cols, (t + 1) * cols), 1, false);
        expect(Array.from(one)).toEqual(Array.from(all.subarray(t * ROWS, (t + 1) * ROWS)));
      }
      for (const [n0, n1] of [[0, 17], [17, 37], [3, 4], [5, 36]] as const) {
        const part = q.matmul(type, w, ROWS, cols, x.subarray(0, 13 * cols), 13, false, n0, n1);
        for (let t = 0; t < 13; t++)
          for (let n = 0; n < ROWS; n++) {
            const v = part[t * ROWS + n]!;
            expect(v).toBe(n >= n0 && n < n1 ? all[t * ROWS + n]! : 0);
          }
      }
    });

    test(`${type}: equals a float64 dot of the dequantized weights and requantized activations`, () => {
      const T = 3;
      const wf = q.dequantize(type, w, ROWS * cols);
      const xs = x.subarray(0, T * cols);
      const xq = BLOCK[type] === 32 ? q.dequantize('Q8_0', q.quantize('Q8_0', xs), T * cols) : requantizeQ8K(xs);
      const y = q.matmul(type, w, ROWS, cols, xs, T, false);
      for (let t = 0; t < T; t++)
        for (let n = 0; n < ROWS; n++) {
          let dot = 0, mag = 0;
          for (let k = 0; k < cols; k++) {
            const p = wf[n * cols + k]! * xq[t * cols + k]!;
            dot += p;
            mag += Math.abs(p);
          }
          expect(Math.abs(y[t * ROWS + n]! - dot)).toBeLessThanOrEqual(2e-6 * mag + 1e-7);
        }
    });
  }

  test('plain F16 weights go through the same entry point', () => {
    const cols = 64, rows = 5;
    const wf = gaussian(rows * cols, 5);
    const x = gaussian(cols, 6);
    const y = q.matmul('F16', q.quantize('F16', wf), rows, cols, x, 1, false);
    const wr = q.dequantize('F16', q.quantize('F16', wf), rows * cols);
    for (let n = 0; n < rows; n++) {
      let dot = 0;
      for (let k = 0; k < cols; k++) dot += wr[n * cols + k]! * x[k]!;
      expect(y[n]).toBeCloseTo(dot, 4);
    }
  });
});

describe('errors carry codes', () => {
  const code = (fn: () => unknown) => {
    try {
      fn();
    } catch (e) {
      return (e as { code?: string }).code;
    }
    return 'no error';
  };
  test('unknown type, counts off the block, short buffers, bad ranges', () => {
    expect(code(() => q.quantize('Q3_K' as NativeQuantType, new Float32Array(256)))).toBe('WEFT_UNSUPPORTED_DTYPE');
    expect(code(() => q.rowBytes('Q2_K' as NativeQuantType, 256))).toBe('WEFT_UNSUPPORTED_DTYPE');
    expect(code(() => q.quantize('Q4_K', new Float32Array(100)))).toBe('WEFT_BAD_ARGUMENT');
    expect(code(() => q.rowBytes('Q8_0', 33))).toBe('WEFT_BAD_ARGUMENT');
    expect(code(() => q.dequantize('Q6_K', new Uint8Array(209), 256))).toBe('WEFT_BAD_ARGUMENT');
    expect(code(() => q.dequantize('Q8_0', new Uint8Array(34), 31))).toBe('WEFT_BAD_ARGUMENT');
    const w = new Uint8Array(q.rowBytes('Q4_0', 64) * 2);
    expect(code(() => q.matmul('Q4_0', w, 3, 64, new Float32Array(64), 1, false))).toBe('WEFT_BAD_ARGUMENT');
    expect(code(() => q.matmul('Q4_0', w, 2, 64, new Float32Array(63), 1, false))).toBe('WEFT_BAD_ARGUMENT');
    expect(code(() => q.matmul('Q4_0', w, 2, 64, new Float32Array(64), 1, false, 1, 3))).toBe('WEFT_BAD_ARGUMENT');
    expect(code(() => q.quantize('Q8_0', new Uint8Array(32) as unknown as Float32Array))).toBe('WEFT_BAD_ARGUMENT');
  });
});

describe('kernel settings (options.tuning)', () => {
  const models = new TinyModels();
  const files: Record<string, string> = {};
  const candidates = native().tuningCandidates();
  beforeAll(async () => {
    const dir = await models.make('tune', { hidden: 256, layers: 2, heads: 4, kvHeads: 2, ffn: 512, vocab: 512, seed: 5 });
    for (const type of ['q8_0', 'q4_k_m'] as const) {
      files[type] = join(models.root, `tune.${type}.gguf`);
      await exportGguf(dir, files[type]!, { type });
    }
  }, 60_000);
  afterAll(() => models.cleanup());

  /** Logits of a prefill of 80 tokens (a prefill step), 3 sequences' next tokens (a batch step), one more token (decode1). */
  async function logits(file: string, tuning?: Record<string, number>): Promise<Float32Array[]> {
    const engine = await Engine.load(file, { threads: 2, tokenizer: false, kvMemoryBytes: 16 << 20, ...(tuning ? { tuning: { decode1: tuning, batch: tuning, prefill: tuning } } : {}) });
    try {
      const seqs = [0, 1, 2].map(() => engine.createSequence({ ignoreEos: true }));
      const out: Float32Array[] = [];
      for (const [i, s] of seqs.entries()) {
        const [r] = await engine.run([{ sequence: s, tokens: Array.from({ length: 80 - 20 * i }, (_, j) => (j * 37 + i * 11) % 512), logits: 'last' }]);
        out.push(r!.logits!);
      }
      for (const r of await engine.run(seqs.map((s, i) => ({ sequence: s, tokens: [7 + i, 3], logits: 'all' as const })))) out.push(r.logits!);
      out.push((await engine.run([{ sequence: seqs[1]!, tokens: [9], logits: 'last' }]))[0]!.logits!);
      return out;
    } finally {
      engine.dispose();
    }
  }

  test('a few candidates, the defaults first, each with every key', () => {
    expect(candidates.length).toBeGreaterThanOrEqual(2);
    expect(candidates.length).toBeLessThanOrEqual(6);
    for (const c of candidates) expect(Object.keys(c).sort()).toEqual(Object.keys(candidates[0]!).sort());
  });

  // No setting changes the order in which an output accumulates: tolerance 0 (the same bits).
  for (const type of ['q8_0', 'q4_k_m']) {
    test(`${type}: every candidate gives the same logits as the defaults, bit for bit`, async () => {
      const want = await logits(files[type]!);
      for (const c of candidates) {
        const got = await logits(files[type]!, c);
        got.forEach((row, i) => expect(Array.from(row), `${JSON.stringify(c)}, row ${i}`).toEqual(Array.from(want[i]!)));
      }
    }, 60_000);
  }

  test('an unknown key or a value out of range is a coded error naming it', async () => {
    const fail = async (tuning: unknown) => {
      try {
        (await Engine.load(files.q8_0!, { threads: 1, tokenizer: false, tuning: tuning as never })).dispose();
        return 'no error';
      } catch (e) {
        return `${(e as { code?: string }).code}: ${(e as Error).message}`;
      }
    };
    expect(await fail({ batch: { tileRows: 4 } })).toMatch(/^WEFT_BAD_ARGUMENT: .*options\.tuning\.batch\.tileRows/);
    expect(await fail({ prefill: { rowBlockK: 0 } })).toMatch(/^WEFT_BAD_ARGUMENT: .*options\.tuning\.prefill\.rowBlockK must be an integer in 1\.\.8/);
    expect(await fail({ decode1: { gemvRows: 1.5 } })).toMatch(/^WEFT_BAD_ARGUMENT: .*gemvRows/);
    expect(await fail({ decode2: {} })).toMatch(/^WEFT_BAD_ARGUMENT: .*options\.tuning\.decode2/);
  });
});
