/**
 * src/engine/gguf.ts: writer -> reader round trips of every metadata type and tensor type; each
 * kind of bad input gives its code and a message naming the fault; and a seeded fuzz of mutated
 * files, each of which must parse or fail with a coded WeftError, never read out of bounds,
 * never hang and never allocate more than the file's size.
 */
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { WeftError } from '../src/errors.js';
import {
  GgufType, ggmlType, ggufTensorInfos, meta, readGguf, writeGguf, type GgufMeta, type GgufTensorToWrite,
} from '../src/engine/gguf.js';
import { encodeFloats, readTensorBytes } from '../src/engine/dtype.js';
import { native } from '../src/engine/native.js';
import { ggufArchitecture } from '../src/engine/gguf-model.js';
import { mulberry32 } from '../bench/llamacpp.js';

let root = '';
beforeAll(async () => {
  root = await mkdtemp(path.join(os.tmpdir(), 'weft-gguf-format-'));
});
afterAll(async () => {
  if (root) await rm(root, { recursive: true, force: true });
});

function randomBytes(rand: () => number, n: number): Uint8Array {
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = Math.floor(rand() * 256);
  return out;
}

/** Bytes of a tensor of `type` and `shape` filled with random bytes (a valid block layout is not needed to round-trip). */
function randomTensor(rand: () => number, name: string, type: string, shape: number[]): GgufTensorToWrite {
  const t = ggmlType(type)!;
  const n = shape.reduce((a, b) => a * b, 1);
  return { name, type, shape, data: randomBytes(rand, (n / t.blockSize) * t.blockBytes) };
}

const ALL_METADATA: Record<string, GgufMeta> = {
  'general.architecture': meta.str('llama'),
  'test.u8': meta.u8(255),
  'test.i8': meta.i8(-128),
  'test.u16': meta.u16(65535),
  'test.i16': meta.i16(-32768),
  'test.u32': meta.u32(4294967295),
  'test.i32': meta.i32(-2147483648),
  'test.f32': meta.f32(Math.fround(-1.2345)),
  'test.bool.true': meta.bool(true),
  'test.bool.false': meta.bool(false),
  'test.str': meta.str('héllo ▁ 世界 😀'),
  'test.str.empty': meta.str(''),
  'test.u64': meta.u64(2n ** 64n - 1n),
  'test.i64': meta.i64(-(2n ** 63n)),
  'test.f64': meta.f64(Math.PI),
  'test.arr.u8': meta.array(GgufType.UINT8, [0, 1, 255]),
  'test.arr.i8': meta.array(GgufType.INT8, [-128, 0, 127]),
  'test.arr.u16': meta.array(GgufType.UINT16, [0, 65535]),
  'test.arr.i16': meta.array(GgufType.INT16, [-32768, 32767]),
  'test.arr.u32': meta.array(GgufType.UINT32, [0, 4294967295]),
  'test.arr.i32': meta.i32s([-1, 0, 2147483647]),
  'test.arr.f32': meta.f32s([0.5, -2, Math.fround(0.1)]),
  'test.arr.bool': meta.array(GgufType.BOOL, [true, false, true]),
  'test.arr.str': meta.strings(['a', '', 'ünï', 'x'.repeat(3000)]),
  'test.arr.u64': meta.array(GgufType.UINT64, [0n, 2n ** 64n - 1n]),
  'test.arr.i64': meta.array(GgufType.INT64, [-(2n ** 63n), 2n ** 63n - 1n]),
  'test.arr.f64': meta.array(GgufType.FLOAT64, [1e300, -5e-324]),
  'test.arr.empty': meta.array(GgufType.UINT32, []),
  'test.arr.nested': meta.arrays([meta.strings(['x', 'y']), meta.array(GgufType.UINT8, [7]), meta.arrays([meta.i32s([-5])])]),
};

describe('writeGguf -> readGguf', () => {
  it('round-trips every metadata value type, with its type', async () => {
    const file = path.join(root, 'meta.gguf');
    await writeGguf(file, { metadata: ALL_METADATA, tensors: [] });
    const g = await readGguf(file);
    expect(g.version).toBe(3);
    expect([...g.kv.keys()]).toEqual(Object.keys(ALL_METADATA));
    expect(g.kv).toEqual(new Map(Object.entries(ALL_METADATA)));
    expect(g.metadata.get('test.u64')).toBe(2n ** 64n - 1n);
    expect(g.metadata.get('test.arr.nested')).toEqual([['x', 'y'], [7], [[-5]]]);
    expect(g.metadata.get('test.str')).toBe('héllo ▁ 世界 😀');
    expect(g.tensors).toEqual([]);
  });

  it('round-trips every tensor type weft supports, in HF shape order, aligned and inside the file', async () => {
    const rand = mulberry32(7);
    const floats = Array.from({ length: 6 * 32 }, () => rand() * 4 - 2);
    const tensors: GgufTensorToWrite[] = [
      { name: 'f32', type: 'F32', shape: [6, 32], data: encodeFloats(floats, 'F32') },
      { name: 'f16', type: 'F16', shape: [6, 32], data: encodeFloats(floats, 'F16') },
      { name: 'bf16', type: 'BF16', shape: [2, 3, 32], data: encodeFloats(floats, 'BF16') },
      { name: 'vec', type: 'F32', shape: [5], data: encodeFloats([1, 2, 3, 4, 5], 'F32') },
      randomTensor(rand, 'q8_0', 'Q8_0', [3, 64]),
      randomTensor(rand, 'q4_0', 'Q4_0', [5, 32]),
      randomTensor(rand, 'q4_k', 'Q4_K', [2, 512]),
      randomTensor(rand, 'q5_k', 'Q5_K', [3, 256]),
      randomTensor(rand, 'q6_k', 'Q6_K', [1, 2, 256]),
    ];
    for (const alignment of [32, 64]) {
      const file = path.join(root, `tensors-${alignment}.gguf`);
      const res = await writeGguf(file, { metadata: { 'general.architecture': meta.str('llama') }, tensors, alignment });
      const g = await readGguf(file);
      expect(g.alignment).toBe(alignment);
      expect(g.dataOffset % alignment).toBe(0);
      expect(res.dataOffset).toBe(g.dataOffset);
      expect(g.fileSize).toBe(res.bytes);
      expect(g.tensors.map((t) => [t.name, t.dtype, t.shape])).toEqual(tensors.map((t) => [t.name, t.type, t.shape]));
      expect(g.tensors.find((t) => t.name === 'q4_k')!.ne).toEqual([512, 2]);
      const infos = ggufTensorInfos(g);
      for (const t of tensors) {
        const info = infos.get(t.name)!;
        expect(info.offset % alignment).toBe(0);
        expect(info.offset + info.nbytes).toBeLessThanOrEqual(g.fileSize);
        expect(Buffer.from(await readTensorBytes(info)).equals(Buffer.from(t.data as Uint8Array))).toBe(true);
      }
    }
  });

  it('quantized tensors from the native quantizer dequantize back within each type\'s error', async () => {
    const quant = (native() as unknown as { quant?: { quantize(t: string, x: Float32Array): Uint8Array; dequantize(t: string, b: Uint8Array, n: number): Float32Array } }).quant;
    expect(quant, 'native().quant (the addon\'s ggml quantizer) is not built').toBeDefined();
    const rand = mulberry32(11);
    const x = Float32Array.from({ length: 4 * 256 }, () => rand() * 2 - 1);
    // Worst relative RMS error per type for uniform data (ggml's own quantizers do better).
    const tolerance: Record<string, number> = { Q8_0: 0.01, Q6_K: 0.03, Q5_K: 0.06, Q4_K: 0.12, Q4_0: 0.15 };
    const tensors: GgufTensorToWrite[] = Object.keys(tolerance).map((type) => ({ name: type, type, shape: [4, 256], data: quant!.quantize(type, x) }));
    const file = path.join(root, 'quant.gguf');
    await writeGguf(file, { metadata: {}, tensors });
    const infos = ggufTensorInfos(await readGguf(file));
    for (const [type, tol] of Object.entries(tolerance)) {
      const y = quant!.dequantize(type, await readTensorBytes(infos.get(type)!), x.length);
      let err = 0;
      let ref = 0;
      for (let i = 0; i < x.length; i++) {
        err += (x[i] - y[i]) ** 2;
        ref += x[i] ** 2;
      }
      expect(Math.sqrt(err / ref), type).toBeLessThan(tol);
    }
  });

  it('lists an unsupported tensor type only when asked, and names it in the error otherwise', async () => {
    const rand = mulberry32(3);
    const file = path.join(root, 'q3k.gguf');
    await writeGguf(file, { metadata: {}, tensors: [randomTensor(rand, 'blk.0.attn_q.weight', 'F16', [2, 32]), randomTensor(rand, 'blk.3.ffn_down.weight', 'Q3_K', [2, 256])] });
    const err = await readGguf(file).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(WeftError);
    expect((err as WeftError).code).toBe('WEFT_UNSUPPORTED_DTYPE');
    expect((err as WeftError).message).toContain('tensor "blk.3.ffn_down.weight" has type Q3_K, which weft does not support (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q5_K, Q6_K)');
    expect((err as WeftError).message).toContain(file);
    const g = await readGguf(file, { allowUnsupportedTypes: true });
    expect(g.tensors[1]).toMatchObject({ typeName: 'Q3_K', ggmlType: 11, dtype: null, nbytes: 220 });
    expect(() => ggufTensorInfos(g)).toThrow(/Q3_K/);
  });

  it('refuses what it cannot write: bad values, names, shapes and data sizes', async () => {
    const file = path.join(root, 'bad-write.gguf');
    const w = (o: Partial<Parameters<typeof writeGguf>[1]>) => writeGguf(file, { metadata: {}, tensors: [], ...o });
    await expect(w({ metadata: { k: meta.u8(256) } })).rejects.toThrow(/not a valid UINT8/);
    await expect(w({ metadata: { k: meta.i32(1.5) } })).rejects.toThrow(/not a valid INT32/);
    await expect(w({ metadata: { k: meta.arrays([meta.u8(1)]) } })).rejects.toThrow(/array of arrays/);
    await expect(w({ alignment: 48 })).rejects.toThrow(/power of two/);
    const f32 = (name: string, shape: number[], n = shape.reduce((a, b) => a * b, 1) * 4) => ({ name, type: 'F32', shape, data: new Uint8Array(n) });
    await expect(w({ tensors: [f32('a', [2]), f32('a', [2])] })).rejects.toThrow(/duplicate tensor name "a"/);
    await expect(w({ tensors: [f32('x'.repeat(64), [2])] })).rejects.toThrow(/tensor name/);
    await expect(w({ tensors: [f32('a', [0])] })).rejects.toThrow(/positive dimensions/);
    await expect(w({ tensors: [f32('a', [2], 4)] })).rejects.toThrow(/has 4 bytes of data, expected 8/);
    await expect(w({ tensors: [{ name: 'q', type: 'Q4_K', shape: [1, 128], data: new Uint8Array(72) }] })).rejects.toThrow(/not a multiple of Q4_K's block of 256/);
    await expect(w({ tensors: [{ name: 'q', type: 'Q9_X', shape: [1], data: new Uint8Array(1) }] })).rejects.toThrow(/unknown ggml type Q9_X/);
  });
});

// ---------------------------------------------------------------------------------------------
// Bad input
// ---------------------------------------------------------------------------------------------

/** A small valid file, and where its fields are (found by searching for its key and tensor names). */
interface Sample {
  bytes: Buffer;
  dataOffset: number;
  /** Offsets of u64 string lengths, array counts, u32 value types, dims, ggml types, tensor offsets. */
  fields: { strLen: number[]; arrCount: number[]; valueType: number[]; nDims: number[]; dims: number[]; ggmlType: number[]; tensorOffset: number[] };
  tensorExtents: [number, number][];
}

const SAMPLE_KEYS: Record<string, GgufMeta> = {
  'general.architecture': meta.str('llama'),
  'general.name': meta.str('sample'),
  'kv.alpha': meta.u32(7),
  'kv.beta': meta.strings(['one', 'two', 'three']),
  'kv.gamma': meta.f32s([1, 2]),
  'kv.delta': meta.bool(true),
};

async function makeSample(file: string): Promise<Sample> {
  const rand = mulberry32(99);
  const tensors = [
    randomTensor(rand, 'blk.0.attn_q.weight', 'F16', [4, 32]),
    randomTensor(rand, 'blk.0.ffn_up.weight', 'Q8_0', [2, 64]),
    randomTensor(rand, 'output_norm.weight', 'F32', [32]),
  ];
  await writeGguf(file, { metadata: SAMPLE_KEYS, tensors });
  const bytes = await readFile(file);
  const g = await readGguf(file);
  const fields: Sample['fields'] = { strLen: [], arrCount: [], valueType: [], nDims: [], dims: [], ggmlType: [], tensorOffset: [] };
  const find = (s: string): number => {
    const at = bytes.indexOf(Buffer.from(s));
    if (at < 0) throw new Error(`${s} not in the sample`);
    return at;
  };
  for (const [key, m] of Object.entries(SAMPLE_KEYS)) {
    const at = find(key);
    fields.strLen.push(at - 8);
    const typeAt = at + Buffer.byteLength(key);
    fields.valueType.push(typeAt);
    if (m.type === GgufType.ARRAY) {
      fields.valueType.push(typeAt + 4);
      fields.arrCount.push(typeAt + 8);
      if (m.itemType === GgufType.STRING) fields.strLen.push(typeAt + 16);
    } else if (m.type === GgufType.STRING) fields.strLen.push(typeAt + 4);
  }
  for (const t of g.tensors) {
    const at = bytes.lastIndexOf(Buffer.from(t.name), g.dataOffset);
    fields.strLen.push(at - 8);
    const nDimsAt = at + Buffer.byteLength(t.name);
    fields.nDims.push(nDimsAt);
    t.ne.forEach((_, d) => fields.dims.push(nDimsAt + 4 + 8 * d));
    fields.ggmlType.push(nDimsAt + 4 + 8 * t.ne.length);
    fields.tensorOffset.push(nDimsAt + 8 + 8 * t.ne.length);
  }
  return { bytes, dataOffset: g.dataOffset, fields, tensorExtents: g.tensors.map((t) => [t.offset, t.offset + t.nbytes]) };
}

let sample: Sample;
let mutated = '';

async function readMutated(bytes: Buffer): Promise<unknown> {
  await writeFile(mutated, bytes);
  return readGguf(mutated).then(() => null, (e: unknown) => e);
}

async function expectFault(bytes: Buffer, code: string, message: RegExp): Promise<void> {
  const err = await readMutated(bytes);
  expect(err, `expected ${code} ${message}`).toBeInstanceOf(WeftError);
  expect((err as WeftError).code).toBe(code);
  expect((err as WeftError).message).toMatch(message);
  expect((err as WeftError).message).toContain(mutated);
}

function patch(f: (b: Buffer) => void): Buffer {
  const b = Buffer.from(sample.bytes);
  f(b);
  return b;
}

describe('readGguf on bad input', () => {
  beforeAll(async () => {
    sample = await makeSample(path.join(root, 'sample.gguf'));
    mutated = path.join(root, 'mutated.gguf');
  });

  it('the sample parses', async () => {
    expect(await readMutated(sample.bytes)).toBeNull();
  });

  it('a missing file or a directory: WEFT_MODEL_NOT_FOUND', async () => {
    await expect(readGguf(path.join(root, 'nope.gguf'))).rejects.toMatchObject({ code: 'WEFT_MODEL_NOT_FOUND' });
    await expect(readGguf(root)).rejects.toMatchObject({ code: 'WEFT_MODEL_NOT_FOUND' });
  });

  it('truncated files, at every region boundary', async () => {
    await expectFault(sample.bytes.subarray(0, 10), 'WEFT_MODEL_FORMAT', /truncated file: 10 bytes, a GGUF header needs 24 \(at byte 0\)/);
    // Cut inside the metadata: the counts in the header already ask for more than is left.
    await expectFault(sample.bytes.subarray(0, sample.fields.strLen[2] + 3), 'WEFT_MODEL_FORMAT', /tensor count is 3, more than the file can hold \(at most 1\) \(at byte 8\)/);
    const lastKey = sample.fields.strLen[sample.fields.strLen.length - 4];
    await expectFault(sample.bytes.subarray(0, lastKey + 5), 'WEFT_MODEL_FORMAT', /truncated file: metadata key #5 length needs 8 bytes, 5 left/);
    await expectFault(sample.bytes.subarray(0, lastKey + 12), 'WEFT_MODEL_FORMAT', /metadata key #5 length is 8, more than the file can hold \(at most 4\)/);
    await expectFault(sample.bytes.subarray(0, sample.fields.nDims[1] + 6), 'WEFT_MODEL_FORMAT', /truncated file: tensor "blk.0.ffn_up.weight" info/);
    // The data section cut short: a tensor runs past the end.
    await expectFault(sample.bytes.subarray(0, sample.tensorExtents[2][1] - 1), 'WEFT_MODEL_FORMAT', /tensor "output_norm.weight" \(128 bytes at data offset \d+\) runs past the end of the file/);
  });

  it('a tensor table pointing past the end, unaligned or overlapping', async () => {
    const off = sample.fields.tensorOffset[0];
    await expectFault(patch((b) => b.writeBigUInt64LE(1n << 40n, off)), 'WEFT_MODEL_FORMAT', /tensor "blk.0.attn_q.weight" \(256 bytes at data offset 1099511627776\) runs past the end/);
    await expectFault(patch((b) => b.writeBigUInt64LE(2n ** 64n - 32n, off)), 'WEFT_MODEL_FORMAT', /runs past the end/);
    await expectFault(patch((b) => b.writeBigUInt64LE(8n, off)), 'WEFT_MODEL_FORMAT', /tensor "blk.0.attn_q.weight" data offset 8 is not a multiple of the alignment 32/);
    await expectFault(patch((b) => b.writeBigUInt64LE(0n, sample.fields.tensorOffset[1])), 'WEFT_MODEL_FORMAT', /tensors "blk.0.attn_q.weight" and "blk.0.ffn_up.weight" overlap/);
  });

  it('absurd dimensions, dimension counts and types', async () => {
    const d = sample.fields.dims;
    await expectFault(patch((b) => b.writeBigUInt64LE(1n << 60n, d[1])), 'WEFT_MODEL_FORMAT', /tensor "blk.0.attn_q.weight" dimension 1 is 1152921504606846976: the element count passes 2\^53/);
    await expectFault(patch((b) => { b.writeBigUInt64LE(1n << 30n, d[0]); b.writeBigUInt64LE(1n << 30n, d[1]); }), 'WEFT_MODEL_FORMAT', /passes 2\^53/);
    await expectFault(patch((b) => b.writeBigUInt64LE(1n << 40n, d[1])), 'WEFT_MODEL_FORMAT', /runs past the end of the file/);
    await expectFault(patch((b) => b.writeBigUInt64LE(0n, d[0])), 'WEFT_MODEL_FORMAT', /dimension 0 is 0: empty/);
    await expectFault(patch((b) => b.writeUInt32LE(5, sample.fields.nDims[0])), 'WEFT_MODEL_FORMAT', /tensor "blk.0.attn_q.weight" has 5 dimensions \(1 to 4 allowed\)/);
    await expectFault(patch((b) => b.writeUInt32LE(99, sample.fields.ggmlType[0])), 'WEFT_MODEL_FORMAT', /tensor "blk.0.attn_q.weight" has unknown ggml type id 99/);
    await expectFault(patch((b) => b.writeUInt32LE(12, sample.fields.ggmlType[0])), 'WEFT_MODEL_FORMAT', /rows of 32 elements are not a multiple of Q4_K's block of 256/);
    await expectFault(patch((b) => b.writeUInt32LE(11, sample.fields.ggmlType[1])), 'WEFT_UNSUPPORTED_DTYPE', /tensor "blk.0.ffn_up.weight" has type Q3_K/);
  });

  it('a 4 GB string, huge arrays and counts are refused before allocating', async () => {
    const allocs = vi.spyOn(Buffer, 'alloc');
    try {
      await expectFault(patch((b) => b.writeBigUInt64LE(0xffffffffn, sample.fields.strLen[1])), 'WEFT_MODEL_FORMAT', /metadata "general.architecture" length is 4294967295, more than the file can hold/);
      await expectFault(patch((b) => b.writeBigUInt64LE(2n ** 64n - 1n, sample.fields.strLen[0])), 'WEFT_MODEL_FORMAT', /length is 18446744073709551615, more than the file can hold/);
      await expectFault(patch((b) => b.writeBigUInt64LE(4n << 30n, sample.fields.arrCount[0])), 'WEFT_MODEL_FORMAT', /metadata "kv.beta" count is 4294967296, more than the file can hold/);
      await expectFault(patch((b) => b.writeBigUInt64LE(1n << 40n, 8)), 'WEFT_MODEL_FORMAT', /tensor count is 1099511627776, more than the file can hold \(at most \d+\) \(at byte 8\)/);
      await expectFault(patch((b) => b.writeBigUInt64LE(1n << 40n, 16)), 'WEFT_MODEL_FORMAT', /metadata kv count is 1099511627776/);
      const biggest = Math.max(...allocs.mock.calls.map((c) => Number(c[0])));
      expect(biggest).toBeLessThanOrEqual(sample.bytes.length);
    } finally {
      allocs.mockRestore();
    }
  });

  it('bad magic, GGUF v1 and unknown versions, and a big-endian file', async () => {
    await expectFault(patch((b) => b.write('GGML', 0)), 'WEFT_MODEL_FORMAT', /not a GGUF file: magic "GGML"/);
    await expectFault(patch((b) => b.writeUInt32LE(1, 4)), 'WEFT_MODEL_FORMAT', /GGUF version 1 is not supported/);
    await expectFault(patch((b) => b.writeUInt32LE(4, 4)), 'WEFT_MODEL_FORMAT', /unknown GGUF version 4/);
    await expectFault(patch((b) => b.writeUInt32BE(3, 4)), 'WEFT_MODEL_FORMAT', /big-endian \(byte-swapped\) GGUF file/);
    // Version 2 has the same layout.
    expect(await readMutated(patch((b) => b.writeUInt32LE(2, 4)))).toBeNull();
  });

  it('unknown value types, bad bools, duplicate keys and names, bad alignment', async () => {
    const f = sample.fields;
    await expectFault(patch((b) => b.writeUInt32LE(13, f.valueType[0])), 'WEFT_MODEL_FORMAT', /metadata "general.architecture" has unknown value type 13/);
    const boolAt = f.valueType[f.valueType.length - 1] + 4;
    await expectFault(patch((b) => (b[boolAt] = 2)), 'WEFT_MODEL_FORMAT', /metadata "kv.delta": bool byte is 2, not 0 or 1/);
    await expectFault(patch((b) => b.write('kv.alpha', sample.bytes.indexOf('kv.gamma'))), 'WEFT_MODEL_FORMAT', /duplicate metadata key "kv.alpha"/);
    const second = sample.bytes.lastIndexOf('blk.0.ffn_up.weight', sample.dataOffset);
    await expectFault(patch((b) => b.write('blk.0.attn_q.weight', second)), 'WEFT_MODEL_FORMAT', /duplicate tensor name "blk.0.attn_q.weight"/);
    const file = path.join(root, 'align.gguf');
    await writeGguf(file, { metadata: { 'general.alignment': meta.u32(32) }, tensors: [] });
    const bytes = await readFile(file);
    const at = bytes.indexOf('general.alignment') + 'general.alignment'.length + 4;
    await expectFault(Buffer.from(bytes).fill(0, at, at + 4).fill(48, at, at + 1), 'WEFT_MODEL_FORMAT', /general.alignment 48 is not a power of two/);
    const asI32 = Buffer.from(bytes);
    asI32.writeUInt32LE(GgufType.INT32, at - 4);
    await expectFault(asI32, 'WEFT_MODEL_FORMAT', /general.alignment has type INT32, expected UINT32/);
  });

  it('an unknown architecture: WEFT_UNSUPPORTED_ARCH naming it', async () => {
    const file = path.join(root, 'arch.gguf');
    await writeGguf(file, { metadata: { 'general.architecture': meta.str('mamba') }, tensors: [] });
    const g = await readGguf(file);
    const err = (() => {
      try {
        return ggufArchitecture({ file, metadata: g.metadata, tensors: [] });
      } catch (e) {
        return e;
      }
    })();
    expect(err).toBeInstanceOf(WeftError);
    expect(err).toMatchObject({ code: 'WEFT_UNSUPPORTED_ARCH', message: expect.stringMatching(/arch\.gguf: architecture "mamba" .*is not supported/) });
  });
});

// ---------------------------------------------------------------------------------------------
// Fuzz
// ---------------------------------------------------------------------------------------------

describe('readGguf fuzz', () => {
  it('2,000 seeded mutations: each parses or throws a coded WeftError, allocating at most the file size', async () => {
    const rand = mulberry32(20240601);
    const pick = <T>(a: readonly T[]): T => a[Math.floor(rand() * a.length)];
    const f = sample.fields;
    const headerFields = [...f.strLen, ...f.arrCount, ...f.valueType, ...f.nDims, ...f.dims, ...f.ggmlType, ...f.tensorOffset, 4, 8, 16];
    const boundaries = [...new Set([0, 4, 8, 16, 24, ...headerFields, sample.dataOffset, ...sample.tensorExtents.flat(), sample.bytes.length])].sort((a, b) => a - b);
    const huge = [0n, 1n, 0x7fn, 0xffn, 0xffffn, 0xffffffffn, 0x100000000n, 1n << 53n, 2n ** 63n, 2n ** 64n - 1n, BigInt(sample.bytes.length), BigInt(sample.bytes.length - 1)];
    const mutations: ((b: Buffer) => Buffer)[] = [
      (b) => { const i = Math.floor(rand() * b.length); b[i] ^= 1 << Math.floor(rand() * 8); return b; },
      (b) => { for (let k = 0; k < 8; k++) { const i = Math.floor(rand() * sample.dataOffset); b[i] ^= 1 << Math.floor(rand() * 8); } return b; },
      (b) => { const at = pick(headerFields) + Math.floor(rand() * 4); if (at < b.length) b[at] = Math.floor(rand() * 256); return b; },
      (b) => b.subarray(0, Math.max(0, pick(boundaries) + Math.floor(rand() * 3) - 1)),
      (b) => { const at = pick(headerFields); if (at + 8 <= b.length) b.writeBigUInt64LE(pick(huge), at); return b; },
      (b) => { const at = pick(headerFields); if (at + 4 <= b.length) b.writeUInt32LE(Math.floor(rand() * 2 ** 32), at); return b; },
      (b) => { const at = pick([...f.valueType, ...f.ggmlType, ...f.nDims]); if (at + 4 <= b.length) b.writeUInt32LE(Math.floor(rand() * 45), at); return b; },
    ];
    const allocs = vi.spyOn(Buffer, 'alloc');
    const counts = { parsed: 0, rejected: 0 };
    const t0 = performance.now();
    try {
      for (let i = 0; i < 2000; i++) {
        let b = Buffer.from(sample.bytes);
        const n = 1 + Math.floor(rand() * 3);
        for (let k = 0; k < n; k++) b = pick(mutations)(b);
        allocs.mockClear();
        const t1 = performance.now();
        const err = await readMutated(b);
        expect(performance.now() - t1, `mutation ${i} took too long`).toBeLessThan(2000);
        if (err === null) counts.parsed++;
        else {
          if (!(err instanceof WeftError)) throw new Error(`mutation ${i}: ${String(err)}`, { cause: err });
          expect(['WEFT_MODEL_FORMAT', 'WEFT_UNSUPPORTED_DTYPE']).toContain(err.code);
          counts.rejected++;
        }
        for (const c of allocs.mock.calls) expect(Number(c[0]), `mutation ${i} allocated more than the file`).toBeLessThanOrEqual(Math.max(b.length, 24));
      }
    } finally {
      allocs.mockRestore();
    }
    expect(counts.parsed).toBeGreaterThan(50);
    expect(counts.rejected).toBeGreaterThan(1000);
    expect(performance.now() - t0).toBeLessThan(30_000);
  }, 60_000);
});
