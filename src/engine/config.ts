/**
 * Reads a Hugging Face `config.json` and turns it into weft's normalized ModelConfig.
 * Supported: LlamaForCausalLM (incl. Llama-3.x "llama3" rope scaling), MistralForCausalLM,
 * Qwen2ForCausalLM. Everything else is WEFT_UNSUPPORTED_ARCH; malformed fields are
 * WEFT_MODEL_FORMAT with the field named.
 */
import { readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { WeftError } from '../errors.js';
import type { NativeEngineSpec } from './native.js';

export type Architecture = 'llama' | 'mistral' | 'qwen2';

export interface RopeScalingLlama3 {
  type: 'llama3';
  factor: number;
  lowFreqFactor: number;
  highFreqFactor: number;
  originalMaxPositionEmbeddings: number;
}

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
  ropeScaling: RopeScalingLlama3 | null;
  tieWordEmbeddings: boolean;
  attentionBias: boolean;
  bosTokenId: number | null;
  eosTokenIds: number[];
}

const ARCH_BY_CLASS: Record<string, Architecture> = {
  LlamaForCausalLM: 'llama',
  MistralForCausalLM: 'mistral',
  Qwen2ForCausalLM: 'qwen2',
};
const ARCH_BY_MODEL_TYPE: Record<string, Architecture> = { llama: 'llama', mistral: 'mistral', qwen2: 'qwen2' };

type Json = Record<string, unknown>;

function fmt(file: string, msg: string): WeftError {
  return new WeftError('WEFT_MODEL_FORMAT', `${file}: ${msg}`);
}

function describe(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  if (typeof v === 'string') return `string ${JSON.stringify(v.length > 40 ? v.slice(0, 40) + '…' : v)}`;
  if (typeof v === 'number') return String(v);
  return typeof v;
}

function posInt(obj: Json, key: string, file: string, prefix = ''): number {
  const v = obj[key];
  if (v === undefined) throw fmt(file, `missing required field "${prefix}${key}"`);
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v <= 0) {
    throw fmt(file, `field "${prefix}${key}" must be a positive integer, got ${describe(v)}`);
  }
  return v;
}

function optPosInt(obj: Json, key: string, file: string, dflt: number): number {
  const v = obj[key];
  if (v === undefined || v === null) return dflt;
  return posInt(obj, key, file);
}

function posFinite(obj: Json, key: string, file: string, dflt: number | undefined, prefix = ''): number {
  const v = obj[key];
  if (v === undefined || v === null) {
    if (dflt === undefined) throw fmt(file, `missing required field "${prefix}${key}"`);
    return dflt;
  }
  if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) {
    throw fmt(file, `field "${prefix}${key}" must be a finite positive number, got ${describe(v)}`);
  }
  return v;
}

function optBool(obj: Json, key: string, file: string, dflt: boolean): boolean {
  const v = obj[key];
  if (v === undefined || v === null) return dflt;
  if (typeof v !== 'boolean') throw fmt(file, `field "${key}" must be a boolean, got ${describe(v)}`);
  return v;
}

function tokenId(v: unknown, field: string, file: string): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) {
    throw fmt(file, `field "${field}" must be a non-negative integer token id, got ${describe(v)}`);
  }
  return v;
}

function detectArchitecture(obj: Json, file: string): Architecture {
  const archs = obj.architectures;
  if (archs !== undefined && archs !== null) {
    if (!Array.isArray(archs) || archs.length === 0 || typeof archs[0] !== 'string') {
      throw fmt(file, `field "architectures" must be a non-empty array of strings, got ${describe(archs)}`);
    }
    const a = ARCH_BY_CLASS[archs[0]];
    if (!a) {
      throw new WeftError(
        'WEFT_UNSUPPORTED_ARCH',
        `${file}: architecture "${archs[0]}" (field "architectures") is not supported; supported: ${Object.keys(ARCH_BY_CLASS).join(', ')}`,
      );
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
    throw new WeftError(
      'WEFT_UNSUPPORTED_ARCH',
      `${file}: model_type "${mt}" (field "model_type") is not supported; supported: ${Object.keys(ARCH_BY_MODEL_TYPE).join(', ')}`,
    );
  }
  return a;
}

function parseRopeScaling(v: unknown, file: string, field = 'rope_scaling'): RopeScalingLlama3 | null {
  if (v === undefined || v === null) return null;
  if (typeof v !== 'object' || Array.isArray(v)) {
    throw fmt(file, `field "${field}" must be an object or null, got ${describe(v)}`);
  }
  const rs = v as Json;
  const kind = rs.rope_type ?? rs.type;
  if (typeof kind !== 'string') {
    throw fmt(file, `field "${field}.rope_type" (or "${field}.type") must be a string, got ${describe(kind)}`);
  }
  if (kind === 'default') return null; // HF: "default" means plain RoPE
  if (kind !== 'llama3') {
    throw new WeftError(
      'WEFT_UNSUPPORTED_ARCH',
      `${file}: rope scaling type "${kind}" (field "${field}.rope_type") is not supported; only "llama3" scaling (or none) is`,
    );
  }
  const p = `${field}.`;
  const factor = posFinite(rs, 'factor', file, undefined, p);
  const lowFreqFactor = posFinite(rs, 'low_freq_factor', file, undefined, p);
  const highFreqFactor = posFinite(rs, 'high_freq_factor', file, undefined, p);
  const originalMaxPositionEmbeddings = posInt(rs, 'original_max_position_embeddings', file, p);
  if (!(highFreqFactor > lowFreqFactor)) {
    throw fmt(
      file,
      `field "${field}.high_freq_factor" (${highFreqFactor}) must be greater than "${field}.low_freq_factor" (${lowFreqFactor})`,
    );
  }
  return { type: 'llama3', factor, lowFreqFactor, highFreqFactor, originalMaxPositionEmbeddings };
}

/**
 * RoPE settings. Classic configs carry "rope_theta" and "rope_scaling"; newer transformers
 * (v5) write a flat "rope_parameters" object {rope_type, rope_theta, factor, ...} instead.
 */
function parseRope(obj: Json, file: string): { ropeTheta: number; ropeScaling: RopeScalingLlama3 | null } {
  const rp = obj.rope_parameters;
  if (rp !== undefined && rp !== null) {
    if (typeof rp !== 'object' || Array.isArray(rp)) {
      throw fmt(file, `field "rope_parameters" must be an object or null, got ${describe(rp)}`);
    }
    const r = rp as Json;
    if (r.rope_type === undefined && r.type === undefined) {
      throw new WeftError(
        'WEFT_UNSUPPORTED_ARCH',
        `${file}: field "rope_parameters" has no "rope_type" (per-layer-type RoPE parameters are not supported)`,
      );
    }
    const topTheta = posFinite(obj, 'rope_theta', file, 10000);
    const ropeTheta = posFinite(r, 'rope_theta', file, topTheta, 'rope_parameters.');
    return { ropeTheta, ropeScaling: parseRopeScaling(r, file, 'rope_parameters') };
  }
  return { ropeTheta: posFinite(obj, 'rope_theta', file, 10000), ropeScaling: parseRopeScaling(obj.rope_scaling, file) };
}

/** Normalizes a parsed config.json object. `file` is used in error messages. Throws WeftError. */
export function parseModelConfig(json: unknown, file: string): ModelConfig {
  if (typeof json !== 'object' || json === null || Array.isArray(json)) {
    throw fmt(file, `expected a JSON object at top level, got ${describe(json)}`);
  }
  const obj = json as Json;
  const architecture = detectArchitecture(obj, file);

  const hiddenSize = posInt(obj, 'hidden_size', file);
  const numLayers = posInt(obj, 'num_hidden_layers', file);
  const numHeads = posInt(obj, 'num_attention_heads', file);
  const numKvHeads = optPosInt(obj, 'num_key_value_heads', file, numHeads);
  if (numHeads % numKvHeads !== 0) {
    throw fmt(
      file,
      `field "num_attention_heads" (${numHeads}) must be divisible by "num_key_value_heads" (${numKvHeads})`,
    );
  }
  let headDim: number;
  if (obj.head_dim === undefined || obj.head_dim === null) {
    if (hiddenSize % numHeads !== 0) {
      throw fmt(
        file,
        `field "hidden_size" (${hiddenSize}) is not divisible by "num_attention_heads" (${numHeads}) and no "head_dim" is given`,
      );
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
  const { ropeTheta, ropeScaling } = parseRope(obj, file);
  const tieWordEmbeddings = optBool(obj, 'tie_word_embeddings', file, false);

  let attentionBias: boolean;
  if (architecture === 'qwen2') {
    attentionBias = true; // Qwen2 always has q/k/v biases
  } else if (architecture === 'llama') {
    attentionBias = optBool(obj, 'attention_bias', file, false);
  } else {
    attentionBias = false;
  }

  const hiddenAct = obj.hidden_act;
  if (hiddenAct !== undefined && hiddenAct !== null && hiddenAct !== 'silu' && hiddenAct !== 'swish') {
    throw new WeftError(
      'WEFT_UNSUPPORTED_ARCH',
      `${file}: field "hidden_act" is ${describe(hiddenAct)}; only "silu" is supported`,
    );
  }

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
    ropeTheta,
    ropeScaling,
    tieWordEmbeddings,
    attentionBias,
    bosTokenId,
    eosTokenIds,
  };
}

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
    attentionBias: config.attentionBias, ropeScaling: config.ropeScaling,
  };
}
