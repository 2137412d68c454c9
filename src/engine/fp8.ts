/**
 * FP8 checkpoints in the Hugging Face layout (docs/models.md, "FP8 checkpoints"): what
 * config.json's `quantization_config` says, and the scale tensor beside each FP8 weight.
 *
 * Layouts (the weight is always fp8 × scale; E4M3 only):
 *   quant_method "fp8" (vLLM / neuralmagic): `<module>.weight_scale`, one f32 per tensor.
 *   quant_method "fp8" with weight_block_size [br, bc] (transformers' FineGrainedFP8, DeepSeek,
 *     Qwen3-FP8): `<module>.weight_scale_inv` [ceil(N / br), ceil(K / bc)], despite the name multiplied.
 *   quant_method "compressed-tensors" with float 8-bit weights (llm-compressor): `<module>.weight_scale`,
 *     strategy "tensor" ([] or [1]), "channel" ([N, 1] or [N]) or "block" (block_structure).
 * `input_scale` (static activation scales) and `k_scale`/`v_scale` are read past: weft keeps
 * activations in bf16/f32 and its own KV dtype. A layer the checkpoint left unquantized (ignore,
 * modules_to_not_convert, ignored_layers) is a plain float tensor; the tensor's dtype decides.
 */
import { WeftError } from '../errors.js';
import { describe, fmt, type Json } from './config-fields.js';
import type { TensorInfo } from './safetensors.js';

export interface Fp8Scheme {
  method: 'fp8' | 'compressed-tensors';
  /** Rows × columns of the weight that one scale covers; 0 stands for "all" (per tensor: [0, 0], per row: [1, 0]). */
  block: [number, number];
  /** The scale tensor's name beside `<module>.weight`. */
  scaleSuffix: 'weight_scale' | 'weight_scale_inv';
  /** Modules the checkpoint left unquantized, as config.json lists them. */
  ignore: string[];
}

/** A weight's scales as a grid [ceil(N / block[0]), ceil(K / block[1])] (the native engine's form). */
export interface Fp8Scale {
  tensor: TensorInfo;
  block: [number, number];
  grid: [number, number];
}

const dtypeErr = (file: string, msg: string) => new WeftError('WEFT_UNSUPPORTED_DTYPE', `${file}: ${msg}`);

function stringList(q: Json, key: string, file: string): string[] {
  const v = q[key];
  if (v === undefined || v === null) return [];
  if (!Array.isArray(v) || !v.every((s) => typeof s === 'string')) {
    throw fmt(file, `field "quantization_config.${key}" must be an array of module names, got ${describe(v)}`);
  }
  return v as string[];
}

function blockSize(v: unknown, field: string, file: string): [number, number] {
  if (!Array.isArray(v) || v.length !== 2 || !v.every((x) => typeof x === 'number' && Number.isSafeInteger(x) && x > 0)) {
    throw fmt(file, `field "quantization_config.${field}" must be [rows, cols] of positive integers, got ${describe(v)}`);
  }
  return [v[0], v[1]];
}

function parseFp8Method(q: Json, file: string): Fp8Scheme {
  if (q.fmt !== undefined && q.fmt !== null && q.fmt !== 'e4m3') {
    throw dtypeErr(file, `quantization_config.fmt is ${describe(q.fmt)}; only FP8 E4M3 ("e4m3") weights are supported`);
  }
  const ignore = [...stringList(q, 'modules_to_not_convert', file), ...stringList(q, 'ignored_layers', file)];
  if (q.weight_block_size === undefined || q.weight_block_size === null) {
    return { method: 'fp8', block: [0, 0], scaleSuffix: 'weight_scale', ignore };
  }
  return { method: 'fp8', block: blockSize(q.weight_block_size, 'weight_block_size', file), scaleSuffix: 'weight_scale_inv', ignore };
}

function parseCompressedTensors(q: Json, file: string): Fp8Scheme {
  const where = 'quantization_config.config_groups';
  const groups = q.config_groups;
  if (typeof groups !== 'object' || groups === null || Array.isArray(groups) || Object.keys(groups).length === 0) {
    throw fmt(file, `field "${where}" must be an object of quantization groups, got ${describe(groups)}`);
  }
  let block: [number, number] | null = null;
  for (const [name, g] of Object.entries(groups as Json)) {
    const w = (g as Json | null)?.weights as Json | null | undefined;
    if (w === undefined || w === null) continue; // activations only
    if (typeof w !== 'object') throw fmt(file, `field "${where}.${name}.weights" must be an object, got ${describe(w)}`);
    if (w.type !== 'float' || w.num_bits !== 8) {
      throw dtypeErr(file, `${where}.${name}.weights is ${describe(w.type)} with ${describe(w.num_bits)} bits; only float 8-bit (FP8 E4M3) weights are supported`);
    }
    if (w.symmetric === false) throw dtypeErr(file, `${where}.${name}.weights is asymmetric (zero points); only symmetric FP8 weights are supported`);
    if (w.dynamic === true) throw dtypeErr(file, `${where}.${name}.weights has dynamic scales; FP8 weights need their scales stored`);
    let b: [number, number];
    if (w.strategy === 'tensor') b = [0, 0];
    else if (w.strategy === 'channel') b = [1, 0];
    else if (w.strategy === 'block') b = blockSize(w.block_structure, `config_groups.${name}.weights.block_structure`, file);
    else throw dtypeErr(file, `${where}.${name}.weights.strategy is ${describe(w.strategy)}; supported: "tensor", "channel", "block"`);
    if (block && (block[0] !== b[0] || block[1] !== b[1])) {
      throw dtypeErr(file, `${where}: groups quantize weights with different strategies; weft supports one FP8 scheme per checkpoint`);
    }
    block = b;
  }
  if (!block) throw dtypeErr(file, `${where} quantizes no weights (activation-only quantization is not supported)`);
  const format = q.format;
  if (format !== undefined && format !== null && format !== 'float-quantized') {
    throw dtypeErr(file, `quantization_config.format is ${describe(format)}; FP8 weights are "float-quantized"`);
  }
  const ignore = stringList(q, 'ignore', file);
  for (const entry of ignore) {
    if (!entry.startsWith('re:')) continue;
    try {
      new RegExp(entry.slice(3));
    } catch {
      throw fmt(file, `field "quantization_config.ignore" holds ${describe(entry)}, not a valid regular expression`);
    }
  }
  return { method: 'compressed-tensors', block, scaleSuffix: 'weight_scale', ignore };
}

/** config.json's quantization_config as an FP8 scheme; null when there is none. Throws WeftError. */
export function parseFp8Config(obj: Json, file: string): Fp8Scheme | null {
  const q = obj.quantization_config;
  if (q === undefined || q === null) return null;
  if (typeof q !== 'object' || Array.isArray(q)) throw fmt(file, `field "quantization_config" must be an object, got ${describe(q)}`);
  const method = (q as Json).quant_method;
  if (method === 'fp8') return parseFp8Method(q as Json, file);
  if (method === 'compressed-tensors') return parseCompressedTensors(q as Json, file);
  throw dtypeErr(file, `quantization_config.quant_method is ${describe(method)}; weft loads FP8 ("fp8", "compressed-tensors") checkpoints, and GGUF files for integer quantizations`);
}

/** Whether `module` (e.g. "model.layers.0.mlp.down_proj") is on the scheme's ignore list. */
export function isIgnored(scheme: Fp8Scheme, module: string): boolean {
  return scheme.ignore.some((entry) => {
    if (entry.startsWith('re:')) return new RegExp(`^(?:${entry.slice(3)})`).test(module); // compressed-tensors
    if (scheme.method === 'compressed-tensors') return entry === module;
    return module === entry || module.includes(entry); // transformers matches by substring
  });
}

const shapeStr = (s: readonly number[]) => `[${s.join(', ')}]`;

/**
 * The scale of FP8 weight `w` ([N, K], named "<module>.weight"), checked against the scheme.
 * Throws WeftError: no scheme or an ignored module (MODEL_FORMAT), no scale (TENSOR_MISSING), a scale
 * of another dtype (UNSUPPORTED_DTYPE) or shape (TENSOR_SHAPE).
 */
export function fp8Scale(scheme: Fp8Scheme | undefined, tensors: Map<string, TensorInfo>, w: TensorInfo): Fp8Scale {
  if (!scheme) {
    throw new WeftError('WEFT_MODEL_FORMAT', `tensor "${w.name}" in ${w.file} is F8_E4M3, but config.json has no FP8 quantization_config to say how it is scaled`);
  }
  const module = w.name.replace(/\.weight$/, '');
  if (isIgnored(scheme, module)) {
    throw new WeftError('WEFT_MODEL_FORMAT', `tensor "${w.name}" in ${w.file} is F8_E4M3, but quantization_config lists ${module} as not quantized`);
  }
  const name = `${module}.${scheme.scaleSuffix}`;
  const [N, K] = w.shape as [number, number];
  const [br, bc] = scheme.block;
  const grid: [number, number] = [br === 0 ? 1 : Math.ceil(N / br), bc === 0 ? 1 : Math.ceil(K / bc)];
  const block: [number, number] = [br === 0 ? N : br, bc === 0 ? K : bc];
  const t = tensors.get(name);
  if (!t) throw new WeftError('WEFT_TENSOR_MISSING', `FP8 weight "${w.name}" has no scale: tensor "${name}" (shape ${shapeStr(grid)}) is not in the checkpoint`);
  if (t.dtype !== 'F32' && t.dtype !== 'BF16' && t.dtype !== 'F16') {
    throw new WeftError('WEFT_UNSUPPORTED_DTYPE', `${t.file}: scale "${name}" is ${t.dtype}; FP8 scales must be F32, BF16 or F16`);
  }
  // per tensor: [] or [1]; per row: [N, 1] or [N]; blocks: the grid
  const numel = t.shape.reduce((a, b) => a * b, 1);
  const ok =
    br === 0 && bc === 0 ? t.shape.length <= 1 && numel === 1
    : br === 1 && bc === 0 ? (t.shape.length === 2 && t.shape[0] === N && t.shape[1] === 1) || (t.shape.length === 1 && t.shape[0] === N)
    : t.shape.length === 2 && t.shape[0] === grid[0] && t.shape[1] === grid[1];
  if (!ok) {
    const what = br === 0 && bc === 0 ? 'one scale per tensor ([] or [1])' : br === 1 && bc === 0 ? `one scale per output row ([${N}, 1])` : `one scale per ${br}x${bc} block (${shapeStr(grid)})`;
    throw new WeftError('WEFT_TENSOR_SHAPE', `${t.file}: scale "${name}" has shape ${shapeStr(t.shape)}; weight ${shapeStr(w.shape)} with ${what}`);
  }
  return { tensor: t, block, grid };
}
