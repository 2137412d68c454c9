/**
 * FP8 checkpoints in the Hugging Face layout on the CPU backend (docs/models.md, "FP8 checkpoints").
 *
 * 1. Layouts made here from the f32 transformers fixtures (test/fixtures/hf/llama, qwen2): each
 *    linear weight quantized to E4M3 with its scales (per tensor, per channel, blocks) as vLLM,
 *    llm-compressor and transformers write them, beside an F32 twin holding fp8 × scale. The FP8
 *    checkpoint must give the twin's logits bit for bit, and the float64 reference forward pass
 *    (test/reference/forward.ts) over the twin within 1e-4 (max |diff| / max |ref| per position).
 * 2. Checkpoints written by torch and transformers (scripts/gpu/fp8_fixtures.py, on the GPU
 *    machine) with transformers' logits of the dequantized model, within 1e-3: skipped, with a
 *    note, while test/fixtures/hf/fp8_* are absent.
 * 3. Every malformed or unsupported FP8 checkpoint fails with its code, and leaves nothing behind.
 */
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { bf16ToF32, encodeFloats, f32ToBf16, f32ToFp8e4m3, fp8e4m3ToF32, readTensorBytes, readTensorF64 } from '../src/engine/dtype.js';
import { Engine } from '../src/engine/engine.js';
import { native } from '../src/engine/native.js';
import { readSafetensorsIndex, writeSafetensors, type TensorToWrite } from '../src/engine/safetensors.js';
import { loadModelConfig, nativeConfig } from '../src/engine/config.js';
import { resolveWeights, tensorSpecs } from '../src/engine/weights.js';
import { cpuLogits, maxRelError, row } from './helpers/models.js';
import { ReferenceModel } from './reference/forward.js';

const ROOT = join(import.meta.dirname, 'fixtures', 'hf');
const tmp = mkdtempSync(join(tmpdir(), 'weft-fp8-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

const LINEAR = /\.(q|k|v|o|gate|up|down)_proj\.weight$/;

interface Layout {
  /** config.json's quantization_config */
  quant: Record<string, unknown>;
  /** rows x cols per scale; 0: all */
  block: [number, number];
  scaleName: 'weight_scale' | 'weight_scale_inv';
  scaleDtype: 'F32' | 'BF16';
  /** the per-tensor scale's shape ([] as vLLM writes it, [1] as llm-compressor does) */
  scalarShape?: number[];
  /** modules left in float (their names must be in quant's ignore list) */
  keep?: (module: string) => boolean;
  inputScales?: boolean;
}

interface Checkpoint {
  tensors: TensorToWrite[];
  config: Record<string, unknown>;
  /** the same weights as F32 (fp8 × scale), config without quantization_config */
  twin: TensorToWrite[];
}

const f32Bytes = (v: ArrayLike<number>) => encodeFloats(v, 'F32');

/** Quantizes `base`'s linear weights by `layout` (scales max|w| / 448 per block, rounded to the scale dtype). */
async function quantize(base: string, layout: Layout): Promise<Checkpoint> {
  const tensors: TensorToWrite[] = [];
  const twin: TensorToWrite[] = [];
  for (const t of (await readSafetensorsIndex(base)).values()) {
    const bytes = await readTensorBytes(t);
    const module = t.name.replace(/\.weight$/, '');
    if (!LINEAR.test(t.name) || layout.keep?.(module)) {
      tensors.push({ name: t.name, dtype: t.dtype, shape: t.shape, data: bytes });
      twin.push({ name: t.name, dtype: t.dtype, shape: t.shape, data: bytes });
      continue;
    }
    const w = await readTensorF64(t);
    const [N, K] = t.shape as [number, number];
    const br = layout.block[0] || N;
    const bc = layout.block[1] || K;
    const gr = Math.ceil(N / br);
    const gc = Math.ceil(K / bc);
    const grid = new Float64Array(gr * gc);
    for (let r = 0; r < N; r++) for (let c = 0; c < K; c++) grid[Math.floor(r / br) * gc + Math.floor(c / bc)] = Math.max(grid[Math.floor(r / br) * gc + Math.floor(c / bc)]!, Math.abs(w[r * K + c]!));
    for (let i = 0; i < grid.length; i++) {
      const s = (grid[i] || 1) / 448;
      grid[i] = layout.scaleDtype === 'BF16' ? bf16ToF32(f32ToBf16(s)) : Math.fround(s);
    }
    const q = new Uint8Array(N * K);
    const deq = new Float32Array(N * K);
    for (let r = 0; r < N; r++) {
      for (let c = 0; c < K; c++) {
        const s = grid[Math.floor(r / br) * gc + Math.floor(c / bc)]!;
        q[r * K + c] = f32ToFp8e4m3(w[r * K + c]! / s);
        deq[r * K + c] = Math.fround(fp8e4m3ToF32(q[r * K + c]!) * s); // f32 fp8 × f32 scale, as the engine does
      }
    }
    const scaleShape = layout.block[0] === 0 ? (layout.scalarShape ?? []) : layout.block[1] === 0 ? [N, 1] : [gr, gc];
    tensors.push({ name: t.name, dtype: 'F8_E4M3', shape: t.shape, data: q });
    tensors.push({ name: `${module}.${layout.scaleName}`, dtype: layout.scaleDtype, shape: scaleShape, data: encodeFloats(grid, layout.scaleDtype) });
    if (layout.inputScales) tensors.push({ name: `${module}.input_scale`, dtype: 'F32', shape: [], data: f32Bytes([0.0123]) });
    twin.push({ name: t.name, dtype: 'F32', shape: t.shape, data: f32Bytes(deq) });
  }
  const config = JSON.parse(readFileSync(join(base, 'config.json'), 'utf8')) as Record<string, unknown>;
  return { tensors, twin, config: { ...config, quantization_config: layout.quant } };
}

let dirCount = 0;
async function write(tensors: TensorToWrite[], config: Record<string, unknown>): Promise<string> {
  const dir = join(tmp, `m${dirCount++}`);
  mkdirSync(dir);
  await writeSafetensors(join(dir, 'model.safetensors'), tensors);
  writeFileSync(join(dir, 'config.json'), JSON.stringify(config));
  return dir;
}

const logits = cpuLogits;

const inputsOf = (name: string): number[][] => (JSON.parse(readFileSync(join(ROOT, name, 'logits.json'), 'utf8')) as { inputs: number[][] }).inputs;

const CT_GROUP = (strategy: string, extra: Record<string, unknown> = {}) => ({
  group_0: {
    targets: ['Linear'],
    weights: { num_bits: 8, type: 'float', strategy, symmetric: true, dynamic: false, ...extra },
    input_activations: { num_bits: 8, type: 'float', strategy: 'tensor', symmetric: true, dynamic: false },
  },
});

const LAYOUTS: Record<string, { base: string; layout: Layout }> = {
  // vLLM / neuralmagic "FP8": a scalar scale per tensor, static activation scales; layer 1's down_proj left in float
  'fp8 per tensor (llama)': {
    base: 'llama',
    layout: {
      quant: { quant_method: 'fp8', activation_scheme: 'static', ignored_layers: ['lm_head', 'model.layers.1.mlp.down_proj'] },
      block: [0, 0], scaleName: 'weight_scale', scaleDtype: 'F32', inputScales: true,
      keep: (m) => m === 'model.layers.1.mlp.down_proj',
    },
  },
  // llm-compressor FP8 (W8A8): bf16 scales per output channel, q/k/v biases (Qwen2)
  'compressed-tensors per channel (qwen2)': {
    base: 'qwen2',
    layout: {
      quant: { quant_method: 'compressed-tensors', format: 'float-quantized', quantization_status: 'compressed', config_groups: CT_GROUP('channel'), ignore: ['lm_head'] },
      block: [1, 0], scaleName: 'weight_scale', scaleDtype: 'BF16', inputScales: true,
    },
  },
  'compressed-tensors per tensor (llama)': {
    base: 'llama',
    layout: {
      quant: { quant_method: 'compressed-tensors', format: 'float-quantized', config_groups: CT_GROUP('tensor'), ignore: ['re:.*lm_head', 're:.*layers\\.0\\.self_attn\\.o_proj$'] },
      block: [0, 0], scaleName: 'weight_scale', scaleDtype: 'F32', scalarShape: [1],
      keep: (m) => m === 'model.layers.0.self_attn.o_proj',
    },
  },
  // transformers' FineGrainedFP8 / DeepSeek: weight_scale_inv per 32 x 48 block (edges partial: 64 / 48, 128 / 48)
  'fp8 blocks 32x48 (qwen2)': {
    base: 'qwen2',
    layout: {
      quant: { quant_method: 'fp8', fmt: 'e4m3', activation_scheme: 'dynamic', weight_block_size: [32, 48], modules_to_not_convert: null },
      block: [32, 48], scaleName: 'weight_scale_inv', scaleDtype: 'F32',
    },
  },
  // 128 x 128 blocks on these small matrices: one block per row group (a per-row scale)
  'fp8 blocks 128x128 (llama)': {
    base: 'llama',
    layout: { quant: { quant_method: 'fp8', activation_scheme: 'dynamic', weight_block_size: [128, 128] }, block: [128, 128], scaleName: 'weight_scale_inv', scaleDtype: 'F32' },
  },
  'compressed-tensors blocks 16x32 (llama)': {
    base: 'llama',
    layout: {
      quant: { quant_method: 'compressed-tensors', format: 'float-quantized', config_groups: CT_GROUP('block', { block_structure: [16, 32] }), ignore: ['lm_head'] },
      block: [16, 32], scaleName: 'weight_scale', scaleDtype: 'BF16',
    },
  },
};

describe.each(Object.entries(LAYOUTS))('%s', (_label, { base, layout }) => {
  let fp8Dir = '';
  let twinDir = '';
  beforeAll(async () => {
    const ck = await quantize(join(ROOT, base), layout);
    fp8Dir = await write(ck.tensors, ck.config);
    const { quantization_config: _q, ...plain } = ck.config;
    twinDir = await write(ck.twin, plain);
  });

  test('logits equal the F32 twin (fp8 × scale) and the float64 reference within 1e-4', async () => {
    const ref = await ReferenceModel.load(twinDir);
    for (const tokens of inputsOf(base)) {
      const got = await logits(fp8Dir, tokens);
      expect(got).toEqual(await logits(twinDir, tokens));
      const want = ref.forward(tokens);
      for (let p = 0; p < tokens.length; p++) expect(maxRelError(row(got, ref.config.vocabSize, p), want[p]!), `position ${p}`).toBeLessThan(1e-4);
    }
  });
});

test('the FP8 codec: every E4M3 value round-trips, ties go to even, out of range saturates', () => {
  for (let b = 0; b < 256; b++) {
    if ((b & 0x7f) === 0x7f) expect(fp8e4m3ToF32(b)).toBeNaN();
    else expect(f32ToFp8e4m3(fp8e4m3ToF32(b))).toBe(b === 0x80 ? 0x80 : b);
  }
  expect(fp8e4m3ToF32(0x7e)).toBe(448);
  expect(fp8e4m3ToF32(0x01)).toBe(2 ** -9);
  expect(f32ToFp8e4m3(1000)).toBe(0x7e);
  expect(f32ToFp8e4m3(1.0625)).toBe(0x38); // halfway between 1 (0x38) and 1.125 (0x39): even
  expect(f32ToFp8e4m3(1.1875)).toBe(0x3a); // halfway between 1.125 (0x39) and 1.25 (0x3a): even
});

// ---- checkpoints written by torch / transformers (scripts/gpu/fp8_fixtures.py) ----------------

const TORCH_FIXTURES = existsSync(ROOT) ? readdirSync(ROOT).filter((n) => n.startsWith('fp8_') && existsSync(join(ROOT, n, 'logits.json'))) : [];
describe('transformers FP8 fixtures (test/fixtures/hf/fp8_*)', () => {
  test('the three layouts are there (scripts/gpu/fp8_fixtures.py --out test/fixtures/hf writes them on the GPU machine)', () => {
    expect([...TORCH_FIXTURES].sort()).toEqual(['fp8_llama_block', 'fp8_llama_tensor', 'fp8_qwen2_channel']);
  });

  test.each(TORCH_FIXTURES)('%s: logits within 1e-3 of transformers on the dequantized model', async (name) => {
    const fx = JSON.parse(readFileSync(join(ROOT, name, 'logits.json'), 'utf8')) as { inputs: number[][]; logits: number[][][]; greedy: number[][] };
    const config = await loadModelConfig(join(ROOT, name));
    expect(config.fp8).toBeDefined();
    let worst = 0;
    for (let s = 0; s < fx.inputs.length; s++) {
      const got = await logits(join(ROOT, name), fx.inputs[s]!);
      for (let p = 0; p < fx.inputs[s]!.length; p++) {
        const e = maxRelError(row(got, config.vocabSize, p), fx.logits[s]![p]!);
        worst = Math.max(worst, e);
        expect(e, `input ${s} position ${p}`).toBeLessThan(1e-3);
      }
    }
    console.info(`${name}: max |logit - transformers| / max |logit| = ${worst.toExponential(2)}`);
  });
});

// ---- malformed and unsupported checkpoints ------------------------------------------------------

describe('bad FP8 checkpoints fail with their code', () => {
  const perTensor = LAYOUTS['fp8 per tensor (llama)']!.layout;
  const blocks = LAYOUTS['fp8 blocks 32x48 (qwen2)']!.layout;
  const channel = LAYOUTS['compressed-tensors per channel (qwen2)']!.layout;
  let tensorCk: Checkpoint;
  let blockCk: Checkpoint;
  let channelCk: Checkpoint;
  beforeAll(async () => {
    tensorCk = await quantize(join(ROOT, 'llama'), perTensor);
    blockCk = await quantize(join(ROOT, 'qwen2'), blocks);
    channelCk = await quantize(join(ROOT, 'qwen2'), channel);
  });

  const Q = 'model.layers.0.self_attn.q_proj';
  const edit = (ck: Checkpoint, f: (t: TensorToWrite) => TensorToWrite | null, extra: TensorToWrite[] = []) =>
    [...ck.tensors.map(f).filter((t): t is TensorToWrite => t !== null), ...extra];
  const withQuant = (ck: Checkpoint, quant: unknown) => ({ ...ck.config, quantization_config: quant });
  const scaleValue = (v: number) => (t: TensorToWrite) => (t.name === `${Q}.weight_scale` ? { ...t, data: f32Bytes([v]) } : t);

  async function expectLoadFails(tensors: TensorToWrite[], config: Record<string, unknown>, code: string, text: string | RegExp, quantize?: 'q8_0') {
    const dir = await write(tensors, config);
    const before = readdirSync(dir).sort();
    const err = await Engine.load(dir, { backend: 'cpu', threads: 1, tokenizer: false, quantize }).then(
      (e) => (e.dispose(), null),
      (e: unknown) => e as { code?: string; message?: string },
    );
    expect(err, 'the load should fail').not.toBeNull();
    expect(err!.code, err!.message).toBe(code);
    expect(err!.message).toMatch(text);
    expect(readdirSync(dir).sort()).toEqual(before); // nothing written beside the checkpoint
  }

  test('unsupported FP8 formats: WEFT_UNSUPPORTED_DTYPE', async () => {
    const e5m2 = edit(tensorCk, (t) => (t.name === `${Q}.weight` ? { ...t, dtype: 'F8_E5M2' } : t));
    await expectLoadFails(e5m2, tensorCk.config, 'WEFT_UNSUPPORTED_DTYPE', /F8_E5M2/);
    await expectLoadFails(tensorCk.tensors, withQuant(tensorCk, { quant_method: 'fp8', fmt: 'e5m2' }), 'WEFT_UNSUPPORTED_DTYPE', /e4m3/);
    const int8 = { quant_method: 'compressed-tensors', config_groups: { g: { weights: { num_bits: 8, type: 'int', strategy: 'channel', symmetric: true } } } };
    await expectLoadFails(channelCk.tensors, withQuant(channelCk, int8), 'WEFT_UNSUPPORTED_DTYPE', /float 8-bit/);
    const group = { quant_method: 'compressed-tensors', config_groups: CT_GROUP('group', { group_size: 128 }) };
    await expectLoadFails(channelCk.tensors, withQuant(channelCk, group), 'WEFT_UNSUPPORTED_DTYPE', /strategy/);
    const asym = { quant_method: 'compressed-tensors', config_groups: CT_GROUP('channel', { symmetric: false }) };
    await expectLoadFails(channelCk.tensors, withQuant(channelCk, asym), 'WEFT_UNSUPPORTED_DTYPE', /asymmetric/);
    await expectLoadFails(tensorCk.tensors, withQuant(tensorCk, { quant_method: 'gptq', bits: 4 }), 'WEFT_UNSUPPORTED_DTYPE', /gptq/);
    // an FP8 scale, an FP8 embedding
    const fp8Scale = edit(tensorCk, (t) => (t.name === `${Q}.weight_scale` ? { ...t, dtype: 'F8_E4M3', data: new Uint8Array([0x38]) } : t));
    await expectLoadFails(fp8Scale, tensorCk.config, 'WEFT_UNSUPPORTED_DTYPE', /scale .* is F8_E4M3/);
    const fp8Embed = edit(tensorCk, (t) => (t.name === 'model.embed_tokens.weight' ? { ...t, dtype: 'F8_E4M3', data: t.data.subarray(0, t.data.byteLength / 4) } : t));
    await expectLoadFails(fp8Embed, tensorCk.config, 'WEFT_UNSUPPORTED_DTYPE', /embed_tokens.*only the layers' linear weights/);
    // engine plans and GGUF export read float checkpoints only
    await expectLoadFails(tensorCk.tensors, tensorCk.config, 'WEFT_UNSUPPORTED_DTYPE', /FP8 checkpoint/, 'q8_0');
  });

  test('a missing scale: WEFT_TENSOR_MISSING', async () => {
    await expectLoadFails(edit(tensorCk, (t) => (t.name === `${Q}.weight_scale` ? null : t)), tensorCk.config, 'WEFT_TENSOR_MISSING', `${Q}.weight_scale`);
    // block layouts name it weight_scale_inv
    await expectLoadFails(edit(blockCk, (t) => (t.name === `${Q}.weight_scale_inv` ? null : t)), blockCk.config, 'WEFT_TENSOR_MISSING', `${Q}.weight_scale_inv`);
  });

  test('a scale of the wrong shape, or blocks other than declared: WEFT_TENSOR_SHAPE', async () => {
    const two = edit(tensorCk, (t) => (t.name === `${Q}.weight_scale` ? { ...t, shape: [2], data: f32Bytes([1, 1]) } : t));
    await expectLoadFails(two, tensorCk.config, 'WEFT_TENSOR_SHAPE', /one scale per tensor/);
    const rows = edit(channelCk, (t) => (t.name === `${Q}.weight_scale` ? { ...t, shape: [1, t.shape[0]!] } : t));
    await expectLoadFails(rows, channelCk.config, 'WEFT_TENSOR_SHAPE', /one scale per output row/);
    // the checkpoint's scales are for 32 x 48 blocks; config.json says 64 x 64
    await expectLoadFails(blockCk.tensors, withQuant(blockCk, { quant_method: 'fp8', weight_block_size: [64, 64] }), 'WEFT_TENSOR_SHAPE', /64x64 block/);
  });

  test('inconsistent checkpoints and malformed configs: WEFT_MODEL_FORMAT', async () => {
    const { quantization_config: _q, ...plain } = tensorCk.config;
    await expectLoadFails(tensorCk.tensors, plain, 'WEFT_MODEL_FORMAT', /no FP8 quantization_config/);
    await expectLoadFails(tensorCk.tensors, withQuant(tensorCk, { quant_method: 'fp8', ignored_layers: ['model.layers.0.self_attn.q_proj'] }), 'WEFT_MODEL_FORMAT', /as not quantized/);
    await expectLoadFails(blockCk.tensors, withQuant(blockCk, { quant_method: 'fp8', weight_block_size: [128] }), 'WEFT_MODEL_FORMAT', /weight_block_size/);
    await expectLoadFails(tensorCk.tensors, withQuant(tensorCk, 'fp8'), 'WEFT_MODEL_FORMAT', /quantization_config/);
    const badRegex = { ...(channelCk.config.quantization_config as object), ignore: ['re:(lm_head'] };
    await expectLoadFails(channelCk.tensors, withQuant(channelCk, badRegex), 'WEFT_MODEL_FORMAT', /regular expression/);
  });

  test('non-finite or non-positive scales: WEFT_MODEL_FORMAT from the native loader', async () => {
    for (const v of [NaN, Infinity, 0, -0.01]) {
      await expectLoadFails(edit(tensorCk, scaleValue(v)), tensorCk.config, 'WEFT_MODEL_FORMAT', /finite and positive/);
    }
    // a bf16 block scale that is zero
    const zero = edit(blockCk, (t) => (t.name === `${Q}.weight_scale_inv` ? { ...t, data: new Uint8Array(t.data.byteLength) } : t));
    await expectLoadFails(zero, blockCk.config, 'WEFT_MODEL_FORMAT', /finite and positive/);
    // and the process goes on: a good checkpoint still loads after the failures
    const ok = await write(tensorCk.tensors, tensorCk.config);
    expect((await logits(ok, [1, 2, 3])).length).toBe(3 * 320);
  });

  test('the native loader checks the scale spec itself (grid, missing scale)', async () => {
    const dir = await write(tensorCk.tensors, tensorCk.config);
    const config = await loadModelConfig(dir);
    const { files, specs } = tensorSpecs(resolveWeights(config, await readSafetensorsIndex(dir)));
    const run = async (mutate: (s: (typeof specs)[number]) => void) => {
      const copy = specs.map((s) => ({ ...s, scale: s.scale && { ...s.scale } }));
      mutate(copy.find((s) => s.name === 'layers.0.q')!);
      const engine = new (native().NativeEngine)({
        config: nativeConfig(config), files, tensors: copy,
        options: { contexts: 1, threads: 1, maxBatchTokens: 16, maxBatchSequences: 1, maxLogitRows: 1, maxContext: 0, kvMemoryBytes: 2 ** 20, kvPageTokens: 16, kvDtype: 'F32', backend: 'cpu', cudaDevice: 0 },
      });
      try {
        await engine.load();
        return null;
      } catch (e) {
        return (e as { code: string }).code;
      } finally {
        engine.dispose();
      }
    };
    expect(await run(() => {})).toBeNull();
    expect(await run((s) => delete s.scale)).toBe('WEFT_TENSOR_MISSING');
    expect(await run((s) => (s.scale!.grid = [2, 1]))).toBe('WEFT_TENSOR_SHAPE');
    expect(await run((s) => (s.scale!.nbytes = 8))).toBe('WEFT_MODEL_FORMAT');
    expect(await run((s) => (s.scale!.offset = 1e12))).toBe('WEFT_MODEL_FORMAT');
  });
});
