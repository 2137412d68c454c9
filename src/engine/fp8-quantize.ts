/**
 * Writes an FP8 checkpoint from a float (F32/BF16/F16) Hugging Face safetensors model, in the
 * compressed-tensors per-channel layout that weft (and vLLM) load (docs/models.md, "FP8
 * checkpoints"): each layer matrix (q/k/v/o, gate/up/down, Phi-3's fused qkv/gate_up) becomes
 * F8_E4M3 codes plus `<module>.weight_scale` [N, 1] in f32; embeddings, the LM head, norms, biases
 * and everything else are copied as they are.
 *
 * The quantization is the CUDA backend's `--quantize fp8` (native/src/cuda/kernels.cu,
 * quantizeFp8Kernel), bit for bit, so that the checkpoint holds exactly the weights the GPU holds:
 *   - the matrix is first rounded to the GPU's weight type (`round: 'gpu'`): bf16 when the model's
 *     LM head is BF16, else f16 (an f32 model runs as f16 on the GPU); a no-op for a bf16 model;
 *   - per output row, in f32: m = max |w| (NaN ignored, as fmaxf does);
 *     scale = m / 448 when m is finite and positive, else 1;
 *   - each code = E4M3(w / scale) (f32 quotient), round to nearest even, saturating at ±448.
 * The weight the engines then compute with is fp8 × scale (in f32 on the CPU).
 */
import { copyFile, mkdir, readdir, readFile, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { WeftError } from '../errors.js';
import { loadModelConfig } from './config.js';
import { bf16ToF32, encodeFloats, f16ToF32, f32ToBf16, f32ToF16, f32ToFp8e4m3, fp8e4m3ToF32, readTensorBytes, readTensorF64 } from './dtype.js';
import { readSafetensorsIndex, writeSafetensors, type TensorInfo, type TensorToWrite } from './safetensors.js';
import { resolveWeights } from './weights.js';

/** What the weights are rounded to before quantizing: 'gpu' = the CUDA backend's weight type (bf16 or f16). */
export type Fp8SourceRounding = 'gpu' | 'bf16' | 'f16' | 'none';

export interface Fp8Rows {
  /** N × K E4M3 codes, row-major */
  codes: Uint8Array;
  /** one f32 scale per row */
  scales: Float32Array;
}

const roundTo = (round: 'bf16' | 'f16' | 'none'): ((x: number) => number) =>
  round === 'bf16' ? (x) => bf16ToF32(f32ToBf16(x)) : round === 'f16' ? (x) => f16ToF32(f32ToF16(x)) : Math.fround;

/** Quantizes an N × K row-major matrix per row, as quantizeFp8Kernel does (see the file comment). */
export function quantizeRowsFp8(w: ArrayLike<number>, N: number, K: number, round: 'bf16' | 'f16' | 'none' = 'none'): Fp8Rows {
  if (w.length !== N * K) throw new WeftError('WEFT_BAD_ARGUMENT', `quantizeRowsFp8: ${w.length} values for a ${N} × ${K} matrix`);
  const r16 = roundTo(round);
  const codes = new Uint8Array(N * K);
  const scales = new Float32Array(N);
  const row = new Float32Array(K);
  for (let n = 0; n < N; n++) {
    let m = 0;
    for (let k = 0; k < K; k++) {
      const v = r16(w[n * K + k]!);
      row[k] = v;
      const a = Math.abs(v);
      if (a > m) m = a; // fmaxf: a NaN never wins
    }
    const sc = m > 0 && Number.isFinite(m) ? Math.fround(m / 448) : 1;
    scales[n] = sc;
    for (let k = 0; k < K; k++) codes[n * K + k] = f32ToFp8e4m3(Math.fround(row[k]! / sc));
  }
  return { codes, scales };
}

/** fp8 × scale in f32, as the CPU backend dequantizes an FP8 weight at load. */
export function dequantizeRowsFp8(q: Fp8Rows, N: number, K: number): Float32Array {
  const out = new Float32Array(N * K);
  for (let n = 0; n < N; n++) for (let k = 0; k < K; k++) out[n * K + k] = fp8e4m3ToF32(q.codes[n * K + k]!) * q.scales[n]!;
  return out;
}

/** compressed-tensors' quantization_config for FP8 weights with one f32 scale per output channel. */
export function fp8ChannelConfig(ignore: string[]): Record<string, unknown> {
  return {
    quant_method: 'compressed-tensors',
    format: 'float-quantized',
    quantization_status: 'compressed',
    config_groups: {
      group_0: {
        targets: ['Linear'],
        weights: { num_bits: 8, type: 'float', strategy: 'channel', symmetric: true, dynamic: false },
      },
    },
    ignore,
  };
}

export interface WriteFp8Options {
  /** default 'gpu': the weights the CUDA backend's --quantize fp8 holds */
  round?: Fp8SourceRounding;
  log?: (line: string) => void;
}

export interface WriteFp8Result {
  dir: string;
  /** the layer matrices written as FP8 */
  quantized: string[];
  /** what the weights were rounded to before quantizing */
  round: 'bf16' | 'f16' | 'none';
  bytes: number;
}

const INDEX = 'model.safetensors.index.json';

/**
 * Writes `src`'s FP8 checkpoint to `out` (created; its config.json, safetensors files and index are
 * overwritten). Safetensors files keep their names, so a sharded model stays sharded; every other
 * file of `src` (tokenizer, generation config, …) is copied. Throws WeftError: a source that is
 * already quantized, or that weft cannot load (its config and tensor checks).
 */
export async function writeFp8Checkpoint(src: string, out: string, opts: WriteFp8Options = {}): Promise<WriteFp8Result> {
  const config = await loadModelConfig(src);
  const configJson = JSON.parse(await readFile(path.join(src, 'config.json'), 'utf8')) as Record<string, unknown>;
  if (configJson.quantization_config !== undefined && configJson.quantization_config !== null) {
    throw new WeftError('WEFT_BAD_ARGUMENT', `${src} is already quantized (config.json has a quantization_config); FP8 checkpoints are written from float (F32/BF16/F16) models`);
  }
  const tensors = await readSafetensorsIndex(src);
  const weights = resolveWeights(config, tensors);
  const linear = new Set<string>();
  for (const l of weights.layers) {
    for (const t of [l.qkv ?? l.q, ...(l.qkv ? [] : [l.k, l.v]), l.o, l.gateUp ?? l.gate, ...(l.gateUp ? [] : [l.up]), l.down]) linear.add(t.name);
  }
  for (const t of tensors.values()) {
    if (t.dtype !== 'F32' && t.dtype !== 'BF16' && t.dtype !== 'F16') {
      throw new WeftError('WEFT_UNSUPPORTED_DTYPE', `${t.file}: tensor "${t.name}" is ${t.dtype}; FP8 checkpoints are written from float (F32/BF16/F16) models`);
    }
  }
  const want = opts.round ?? 'gpu';
  const round = want === 'gpu' ? (weights.lmHead.dtype === 'BF16' ? 'bf16' : 'f16') : want;

  // Unquantized 2-D weights other than the embedding go on the ignore list (compressed-tensors'
  // targets are every Linear), as llm-compressor lists lm_head.
  const ignore = new Set<string>(['lm_head']);
  for (const t of tensors.values()) {
    if (t.shape.length === 2 && t.name.endsWith('.weight') && !linear.has(t.name) && t !== weights.embed) ignore.add(t.name.slice(0, -'.weight'.length));
  }

  await mkdir(out, { recursive: true });
  const byFile = new Map<string, TensorInfo[]>();
  for (const t of tensors.values()) byFile.set(t.file, [...(byFile.get(t.file) ?? []), t]);
  const weightMap: Record<string, string> = {};
  let bytes = 0;
  for (const [file, list] of byFile) {
    const name = path.basename(file);
    const written: TensorToWrite[] = [];
    for (const t of list.sort((a, b) => a.offset - b.offset)) {
      if (linear.has(t.name)) {
        const [N, K] = t.shape as [number, number];
        const q = quantizeRowsFp8(await readTensorF64(t), N, K, round);
        const module = t.name.slice(0, -'.weight'.length);
        written.push({ name: t.name, dtype: 'F8_E4M3', shape: [N, K], data: q.codes });
        written.push({ name: `${module}.weight_scale`, dtype: 'F32', shape: [N, 1], data: encodeFloats(q.scales, 'F32') });
        weightMap[`${module}.weight_scale`] = name;
      } else {
        written.push({ name: t.name, dtype: t.dtype, shape: t.shape, data: await readTensorBytes(t) });
      }
      weightMap[t.name] = name;
    }
    const target = path.join(out, name);
    await writeSafetensors(target, written, { format: 'pt' });
    bytes += (await stat(target)).size;
    opts.log?.(`fp8: wrote ${target}`);
  }

  for (const entry of await readdir(src, { withFileTypes: true })) {
    if (!entry.isFile() || entry.name.endsWith('.safetensors') || entry.name === 'config.json' || entry.name === INDEX) continue;
    await copyFile(path.join(src, entry.name), path.join(out, entry.name));
  }
  if (byFile.size > 1 || (await readdir(src)).includes(INDEX)) {
    await writeFile(path.join(out, INDEX), JSON.stringify({ metadata: { total_size: bytes }, weight_map: weightMap }, null, 2) + '\n');
  }
  await writeFile(path.join(out, 'config.json'), JSON.stringify({ ...configJson, quantization_config: fp8ChannelConfig([...ignore]) }, null, 2) + '\n');
  return { dir: out, quantized: [...linear], round, bytes };
}
