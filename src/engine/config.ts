/**
 * Reads a Hugging Face `config.json` and turns it into weft's normalized ModelConfig.
 * Supported: LlamaForCausalLM (incl. Llama-3.x "llama3" rope scaling), MistralForCausalLM,
 * Qwen2ForCausalLM, Qwen3ForCausalLM, Gemma2ForCausalLM, Gemma3ForCausalLM (and the text model of
 * Gemma3ForConditionalGeneration), Phi3ForCausalLM (Phi-3, Phi-4-mini). Everything else is
 * WEFT_UNSUPPORTED_ARCH; malformed fields are WEFT_MODEL_FORMAT with the field named.
 * docs/models.md says what each architecture does and how it was checked against transformers.
 */
import { readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { WeftError } from '../errors.js';
import {
  describe, fmt, optBool, optObject, optPosFinite, optPosInt, posFinite, posInt, tokenId, unsupported, type Json,
} from './config-fields.js';
import { parseFp8Config, type Fp8Scheme } from './fp8.js';
import type { NativeEngineSpec } from './native.js';
import { parseRope, type RopeScalingLlama3, type RopeScalingLongRope } from './rope-config.js';

export type { RopeScalingLlama3, RopeScalingLongRope } from './rope-config.js';

export type Architecture = 'llama' | 'mistral' | 'qwen2' | 'qwen3' | 'gemma2' | 'gemma3' | 'phi3';

export interface ModelConfig {
  architecture: Architecture;
  hiddenSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  intermediateSize: number;
  vocabSize: number;
  maxPositionEmbeddings: number;
  rmsNormEps: number;
  ropeTheta: number;
  /** Llama 3 frequency scaling */
  ropeScaling: RopeScalingLlama3 | null;
  /** Linear scaling: every frequency divided by this (Gemma 3's global layers). */
  ropeLinearFactor: number | null;
  /** Phi-3's LongRoPE. weft uses the long factors when the engine's context exceeds the original one (docs/models.md). */
  longRope: RopeScalingLongRope | null;
  /** Dims of each head that RoPE rotates (Phi-3's partial_rotary_factor; headDim otherwise). */
  rotaryDim: number;
  /** RoPE pairs (2i, 2i+1) instead of rotate_half's (i, i + rotaryDim/2): llama.cpp's permuted Q/K rows. */
  ropeInterleaved: boolean;
  /** Sliding-window layers' own RoPE base (Gemma 3's rope_local_base_freq); null: the global one. */
  ropeLocalTheta: number | null;
  /** Per layer: position p attends to (p - window, p]; 0: to every earlier position. */
  layerWindows: number[];
  tieWordEmbeddings: boolean;
  /** q/k/v projection biases */
  attentionBias: boolean;
  /** o_proj bias (Llama's, Qwen3's and Gemma's attention_bias also covers it) */
  outputBias: boolean;
  /** per-head RMSNorm of q and k before RoPE (Qwen3, Gemma 3) */
  qkNorm: boolean;
  activation: 'silu' | 'gelu_tanh';
  /** Norms multiply by (normOffset + w): 1 for Gemma checkpoints, 0 otherwise (and for GGUF files, which store w + 1). */
  normOffset: number;
  /** Gemma: the attention and MLP outputs are normed before the residual add (four norms a layer). */
  sandwichNorms: boolean;
  /** Gemma: embeddings times sqrt(hiddenSize) (rounded to the embedding dtype, as transformers does). */
  embedScale: boolean;
  /** Attention scores are scaled by queryPreAttnScalar^-0.5 (headDim but for Gemma). */
  queryPreAttnScalar: number;
  /** tanh(x / c) * c on the attention scores / final logits; null: none. */
  attnLogitSoftcap: number | null;
  finalLogitSoftcap: number | null;
  bosTokenId: number | null;
  eosTokenIds: number[];
  /** An FP8 checkpoint's quantization_config (src/engine/fp8.ts); absent for float checkpoints. */
  fp8?: Fp8Scheme;
}

const ARCH_BY_CLASS: Record<string, Architecture> = {
  LlamaForCausalLM: 'llama',
  MistralForCausalLM: 'mistral',
  Qwen2ForCausalLM: 'qwen2',
  Qwen3ForCausalLM: 'qwen3',
  Gemma2ForCausalLM: 'gemma2',
  Gemma3ForCausalLM: 'gemma3',
  Gemma3ForConditionalGeneration: 'gemma3',
  Phi3ForCausalLM: 'phi3',
};
const ARCH_BY_MODEL_TYPE: Record<string, Architecture> = {
  llama: 'llama', mistral: 'mistral', qwen2: 'qwen2', qwen3: 'qwen3', gemma2: 'gemma2', gemma3_text: 'gemma3', gemma3: 'gemma3', phi3: 'phi3',
};

/** transformers' defaults for fields a config.json may leave out (the sizes stay required). */
const DEFAULTS: Partial<Record<Architecture, Json>> = {
  qwen3: { head_dim: 128 },
  gemma2: {
    num_key_value_heads: 4, head_dim: 256, vocab_size: 256000, max_position_embeddings: 8192, rms_norm_eps: 1e-6,
    query_pre_attn_scalar: 256, sliding_window: 4096, rope_theta: 10000, tie_word_embeddings: true,
    final_logit_softcapping: 30.0, attn_logit_softcapping: 50.0,
  },
  gemma3: {
    num_key_value_heads: 4, head_dim: 256, vocab_size: 262208, max_position_embeddings: 131072, rms_norm_eps: 1e-6,
    query_pre_attn_scalar: 256, sliding_window: 4096, rope_theta: 1000000, rope_local_base_freq: 10000,
    sliding_window_pattern: 6, tie_word_embeddings: true,
  },
};

const isGemma = (a: Architecture): boolean => a === 'gemma2' || a === 'gemma3';

function detectArchitecture(obj: Json, file: string): Architecture {
  const archs = obj.architectures;
  if (archs !== undefined && archs !== null) {
    if (!Array.isArray(archs) || archs.length === 0 || typeof archs[0] !== 'string') {
      throw fmt(file, `field "architectures" must be a non-empty array of strings, got ${describe(archs)}`);
    }
    const a = ARCH_BY_CLASS[archs[0]];
    if (!a) {
      throw unsupported(file, `architecture "${archs[0]}" (field "architectures") is not supported; supported: ${Object.keys(ARCH_BY_CLASS).join(', ')}`);
    }
    return a;
  }
  const mt = obj.model_type;
  if (mt === undefined || mt === null) {
    throw fmt(file, 'missing field "architectures" (and no "model_type" to fall back on)');
  }
  if (typeof mt !== 'string') throw fmt(file, `field "model_type" must be a string, got ${describe(mt)}`);
  const a = ARCH_BY_MODEL_TYPE[mt];
  if (!a) {
    throw unsupported(file, `model_type "${mt}" (field "model_type") is not supported; supported: ${Object.keys(ARCH_BY_MODEL_TYPE).join(', ')}`);
  }
  return a;
}

/**
 * The object holding the text model's fields: the config itself, or a multimodal Gemma 3's
 * "text_config" (with the token ids and tying that only its top level may carry); then
 * transformers' defaults for what is left out.
 */
function textConfig(obj: Json, architecture: Architecture, file: string): Json {
  let text = obj;
  const multimodal = obj.model_type === 'gemma3' || (Array.isArray(obj.architectures) && obj.architectures[0] === 'Gemma3ForConditionalGeneration');
  if (multimodal) {
    const t = optObject(obj, 'text_config', file);
    if (t === null) throw fmt(file, 'missing field "text_config" (Gemma3ForConditionalGeneration)');
    text = { ...t };
    for (const k of ['bos_token_id', 'eos_token_id', 'tie_word_embeddings']) if (text[k] === undefined && obj[k] !== undefined) text[k] = obj[k];
  }
  const d = DEFAULTS[architecture];
  if (d) {
    text = { ...text };
    for (const [k, v] of Object.entries(d)) if (text[k] === undefined) text[k] = v;
  }
  return text;
}

/** Which layers attend through a sliding window, and how wide it is, by transformers' rule for the architecture. */
function parseLayerWindows(obj: Json, architecture: Architecture, numLayers: number, file: string): number[] {
  const none = new Array<number>(numLayers).fill(0);
  const windowOf = (): number => posInt(obj, 'sliding_window', file);
  const fromTypes = (fallback: (i: number) => boolean): boolean[] => {
    const lt = obj.layer_types;
    if (lt === undefined || lt === null) return Array.from({ length: numLayers }, (_, i) => fallback(i));
    if (!Array.isArray(lt)) throw fmt(file, `field "layer_types" must be an array, got ${describe(lt)}`);
    if (lt.length !== numLayers) throw fmt(file, `field "layer_types" has ${lt.length} entries, expected one per layer (num_hidden_layers = ${numLayers})`);
    return lt.map((t, i) => {
      if (t === 'sliding_attention') return true;
      if (t === 'full_attention') return false;
      throw unsupported(file, `field "layer_types[${i}]" is ${describe(t)}; only "full_attention" and "sliding_attention" are supported`);
    });
  };
  switch (architecture) {
    case 'llama':
      return none;
    case 'mistral': // every layer, when set (MistralConfig's default is 4096)
      return obj.sliding_window === null ? none : none.fill(optPosInt(obj, 'sliding_window', file, 4096));
    case 'phi3': // every layer, when set
      return obj.sliding_window === undefined || obj.sliding_window === null ? none : none.fill(windowOf());
    case 'qwen2':
    case 'qwen3': { // only with use_sliding_window: the layers from max_window_layers on
      if (!optBool(obj, 'use_sliding_window', file, false)) return none;
      const w = optPosInt(obj, 'sliding_window', file, 4096);
      const mwl = obj.max_window_layers ?? 28;
      if (typeof mwl !== 'number' || !Number.isSafeInteger(mwl) || mwl < 0) throw fmt(file, `field "max_window_layers" must be a non-negative integer, got ${describe(mwl)}`);
      return fromTypes((i) => i >= mwl).map((s) => (s ? w : 0));
    }
    case 'gemma2':
    case 'gemma3': { // interleaved: every pattern-th layer is global
      if (optBool(obj, 'use_bidirectional_attention', file, false)) throw unsupported(file, 'field "use_bidirectional_attention" is true (embedding models are not supported)');
      const pattern = architecture === 'gemma2' ? 2 : posInt(obj, 'sliding_window_pattern', file);
      const sliding = fromTypes((i) => (i + 1) % pattern !== 0);
      if (!sliding.some(Boolean)) return none;
      if (obj.sliding_window === null) throw fmt(file, 'field "sliding_window" is null but "layer_types" has sliding_attention layers');
      const w = windowOf();
      return sliding.map((s) => (s ? w : 0));
    }
  }
}

function parseActivation(obj: Json, architecture: Architecture, file: string): ModelConfig['activation'] {
  if (isGemma(architecture)) { // transformers' Gemma reads hidden_activation only
    const a = obj.hidden_activation ?? 'gelu_pytorch_tanh';
    if (a !== 'gelu_pytorch_tanh' && a !== 'gelu_new') {
      throw unsupported(file, `field "hidden_activation" is ${describe(a)}; only "gelu_pytorch_tanh" is supported`);
    }
    return 'gelu_tanh';
  }
  const a = obj.hidden_act;
  if (a !== undefined && a !== null && a !== 'silu' && a !== 'swish') {
    throw unsupported(file, `field "hidden_act" is ${describe(a)}; only "silu" is supported`);
  }
  return 'silu';
}

function parseTokenIds(obj: Json, vocabSize: number, file: string): { bosTokenId: number | null; eosTokenIds: number[] } {
  let bosTokenId: number | null = null;
  if (obj.bos_token_id !== undefined && obj.bos_token_id !== null) {
    bosTokenId = tokenId(obj.bos_token_id, 'bos_token_id', file);
    if (bosTokenId >= vocabSize) throw fmt(file, `field "bos_token_id" (${bosTokenId}) is not below vocab_size (${vocabSize})`);
  }
  const eosRaw = obj.eos_token_id;
  let eosTokenIds: number[] = [];
  if (eosRaw !== undefined && eosRaw !== null) {
    if (Array.isArray(eosRaw)) {
      eosTokenIds = eosRaw.map((v, i) => tokenId(v, `eos_token_id[${i}]`, file));
    } else {
      eosTokenIds = [tokenId(eosRaw, 'eos_token_id', file)];
    }
    for (const id of eosTokenIds) {
      if (id >= vocabSize) throw fmt(file, `field "eos_token_id" (${id}) is not below vocab_size (${vocabSize})`);
    }
    eosTokenIds = [...new Set(eosTokenIds)];
  }
  return { bosTokenId, eosTokenIds };
}

/** Normalizes a parsed config.json object. `file` is used in error messages. Throws WeftError. */
export function parseModelConfig(json: unknown, file: string): ModelConfig {
  if (typeof json !== 'object' || json === null || Array.isArray(json)) {
    throw fmt(file, `expected a JSON object at top level, got ${describe(json)}`);
  }
  const architecture = detectArchitecture(json as Json, file);
  const obj = textConfig(json as Json, architecture, file);

  const hiddenSize = posInt(obj, 'hidden_size', file);
  const numLayers = posInt(obj, 'num_hidden_layers', file);
  const numHeads = posInt(obj, 'num_attention_heads', file);
  const numKvHeads = optPosInt(obj, 'num_key_value_heads', file, numHeads);
  if (numHeads % numKvHeads !== 0) {
    throw fmt(file, `field "num_attention_heads" (${numHeads}) must be divisible by "num_key_value_heads" (${numKvHeads})`);
  }
  let headDim: number;
  if (obj.head_dim === undefined || obj.head_dim === null) {
    if (hiddenSize % numHeads !== 0) {
      throw fmt(file, `field "hidden_size" (${hiddenSize}) is not divisible by "num_attention_heads" (${numHeads}) and no "head_dim" is given`);
    }
    headDim = hiddenSize / numHeads;
  } else {
    headDim = posInt(obj, 'head_dim', file);
  }
  if (headDim % 2 !== 0) throw fmt(file, `field "head_dim" (${headDim}) must be even for RoPE`);

  const intermediateSize = posInt(obj, 'intermediate_size', file);
  const vocabSize = posInt(obj, 'vocab_size', file);
  const maxPositionEmbeddings = posInt(obj, 'max_position_embeddings', file);
  const rmsNormEps = posFinite(obj, 'rms_norm_eps', file, 1e-6);
  const rope = parseRope(obj, { file, architecture, headDim, maxPositionEmbeddings }, architecture === 'gemma3' ? 1e6 : 1e4);
  const tieWordEmbeddings = optBool(obj, 'tie_word_embeddings', file, false);

  if (optBool(obj, 'mlp_bias', file, false)) throw unsupported(file, 'field "mlp_bias" is true; MLP biases are not supported');
  // q/k/v biases: Qwen2 always; Llama, Qwen3 and Gemma with attention_bias (which covers o_proj too)
  const biasFlag = architecture === 'llama' || architecture === 'qwen3' || isGemma(architecture) ? optBool(obj, 'attention_bias', file, false) : false;
  const attentionBias = architecture === 'qwen2' || biasFlag;
  const gemma = isGemma(architecture);

  return {
    architecture,
    hiddenSize,
    numLayers,
    numHeads,
    numKvHeads,
    headDim,
    intermediateSize,
    vocabSize,
    maxPositionEmbeddings,
    rmsNormEps,
    ...rope,
    ropeInterleaved: false,
    layerWindows: parseLayerWindows(obj, architecture, numLayers, file),
    tieWordEmbeddings,
    attentionBias,
    outputBias: biasFlag,
    qkNorm: architecture === 'qwen3' || architecture === 'gemma3',
    activation: parseActivation(obj, architecture, file),
    normOffset: gemma ? 1 : 0,
    sandwichNorms: gemma,
    embedScale: gemma,
    queryPreAttnScalar: gemma ? posFinite(obj, 'query_pre_attn_scalar', file, undefined) : headDim,
    // transformers' Gemma 3 keeps attn_logit_softcapping but never applies it: neither does weft
    attnLogitSoftcap: architecture === 'gemma2' ? optPosFinite(obj, 'attn_logit_softcapping', file) : null,
    finalLogitSoftcap: gemma ? optPosFinite(obj, 'final_logit_softcapping', file) : null,
    ...parseTokenIds(obj, vocabSize, file),
    ...fp8Field(parseFp8Config(json as Json, file)),
  };
}

const fp8Field = (fp8: Fp8Scheme | null): { fp8?: Fp8Scheme } => (fp8 ? { fp8 } : {});

/** Reads `<dir>/config.json` and normalizes it. Throws WeftError. */
export async function loadModelConfig(dir: string): Promise<ModelConfig> {
  const file = path.join(dir, 'config.json');
  try {
    const st = await stat(dir);
    if (!st.isDirectory()) throw new WeftError('WEFT_MODEL_NOT_FOUND', `model path ${dir} is not a directory`);
  } catch (e) {
    if (e instanceof WeftError) throw e;
    throw new WeftError('WEFT_MODEL_NOT_FOUND', `model directory ${dir} does not exist or is unreadable`, { cause: e });
  }
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (e) {
    throw new WeftError('WEFT_MODEL_NOT_FOUND', `${file} is missing or unreadable`, { cause: e });
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new WeftError('WEFT_MODEL_FORMAT', `${file}: invalid JSON (${(e as Error).message})`, { cause: e });
  }
  return parseModelConfig(json, file);
}

/** The native engine's view of a config (native/src/addon_spec.cpp reads it). */
export function nativeConfig(config: ModelConfig): NativeEngineSpec['config'] {
  return {
    hiddenSize: config.hiddenSize, numLayers: config.numLayers, numHeads: config.numHeads, numKvHeads: config.numKvHeads,
    headDim: config.headDim, intermediateSize: config.intermediateSize, vocabSize: config.vocabSize,
    maxPositionEmbeddings: config.maxPositionEmbeddings, rmsNormEps: config.rmsNormEps, ropeTheta: config.ropeTheta,
    attentionBias: config.attentionBias, outputBias: config.outputBias,
    ropeScaling: config.ropeScaling ?? config.longRope ?? (config.ropeLinearFactor === null ? null : { type: 'linear', factor: config.ropeLinearFactor }),
    rotaryDim: config.rotaryDim, ropeInterleaved: config.ropeInterleaved, ropeLocalTheta: config.ropeLocalTheta ?? 0,
    layerWindows: config.layerWindows, qkNorm: config.qkNorm, activation: config.activation, normOffset: config.normOffset,
    sandwichNorms: config.sandwichNorms, embedScale: config.embedScale, queryPreAttnScalar: config.queryPreAttnScalar,
    attnLogitSoftcap: config.attnLogitSoftcap ?? 0, finalLogitSoftcap: config.finalLogitSoftcap ?? 0,
  };
}

/**
 * What the CUDA backend does not implement among the features a config uses, as one
 * WEFT_UNSUPPORTED_ARCH naming them (null: the config runs on CUDA). The native spec parser
 * refuses the same configs for backend "cuda"; call this first for the better message.
 */
export function cudaUnsupported(config: ModelConfig): WeftError | null {
  const features: [boolean, string][] = [
    [config.qkNorm, 'per-head q/k norms (Qwen3, Gemma 3)'],
    [config.sandwichNorms || config.normOffset !== 0 || config.embedScale, 'Gemma norms and embedding scale'],
    [config.activation !== 'silu', 'GeGLU (hidden_activation)'],
    [config.queryPreAttnScalar !== config.headDim, 'query_pre_attn_scalar'],
    [config.attnLogitSoftcap !== null || config.finalLogitSoftcap !== null, 'logit soft-capping'],
    [config.rotaryDim !== config.headDim, 'partial rotary (partial_rotary_factor)'],
    [config.ropeInterleaved, 'interleaved RoPE'],
    [config.longRope !== null, 'LongRoPE'],
    [config.ropeLocalTheta !== null, 'per-layer RoPE bases (rope_local_base_freq)'],
    [config.layerWindows.some((w) => w > 0 && w < config.maxPositionEmbeddings), 'sliding-window attention (sliding_window)'],
    [config.outputBias, 'o_proj bias'],
  ];
  const used = features.filter(([on]) => on).map(([, name]) => name);
  if (used.length === 0) return null;
  return new WeftError(
    'WEFT_UNSUPPORTED_ARCH',
    `the CUDA backend does not implement ${used.join(', ')}, which this ${config.architecture} model uses; use the cpu backend`,
  );
}
