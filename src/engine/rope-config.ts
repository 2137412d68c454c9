/**
 * RoPE settings from config.json, as transformers reads them. Classic configs carry "rope_theta",
 * "rope_scaling", "partial_rotary_factor" (Phi-3), "original_max_position_embeddings" (Phi-3) and
 * "rope_local_base_freq" (Gemma 3); transformers v5 writes "rope_parameters" instead: one flat
 * object, or one per layer type ({full_attention, sliding_attention}, Gemma 3).
 */
import {
  describe, fmt, optObject, posFinite, posFiniteArray, posInt, unsupported, type Json,
} from './config-fields.js';

export interface RopeScalingLlama3 {
  type: 'llama3';
  factor: number;
  lowFreqFactor: number;
  highFreqFactor: number;
  originalMaxPositionEmbeddings: number;
}

/** Every inverse frequency divided by the factor (Gemma 3's global layers). */
export interface RopeScalingLinear {
  type: 'linear';
  factor: number;
}

/**
 * Phi-3's LongRoPE: frequency i divided by shortFactor[i], or longFactor[i] past the original
 * context; cos and sin scaled by attentionFactor.
 */
export interface RopeScalingLongRope {
  type: 'longrope';
  shortFactor: number[];
  longFactor: number[];
  originalMaxPositionEmbeddings: number;
  attentionFactor: number;
}

type RopeScaling = RopeScalingLlama3 | RopeScalingLinear | RopeScalingLongRope;

function split(rs: RopeScaling | null): Pick<RopeConfig, 'ropeScaling' | 'ropeLinearFactor' | 'longRope'> {
  return {
    ropeScaling: rs?.type === 'llama3' ? rs : null,
    ropeLinearFactor: rs?.type === 'linear' ? rs.factor : null,
    longRope: rs?.type === 'longrope' ? rs : null,
  };
}

export interface RopeConfig {
  ropeTheta: number;
  /** Llama 3 frequency scaling */
  ropeScaling: RopeScalingLlama3 | null;
  /** linear scaling: every frequency divided by this (Gemma 3's global layers) */
  ropeLinearFactor: number | null;
  longRope: RopeScalingLongRope | null;
  /** Dims rotated in each head: headDim, or Phi-3's headDim * partial_rotary_factor. */
  rotaryDim: number;
  /** Sliding-window layers' own base with plain RoPE (Gemma 3); null: they use the global one. */
  ropeLocalTheta: number | null;
}

export interface RopeContext {
  file: string;
  architecture: string;
  headDim: number;
  maxPositionEmbeddings: number;
}

function scalingKind(rs: Json, field: string, file: string): string {
  const kind = rs.rope_type ?? rs.type;
  if (typeof kind !== 'string') throw fmt(file, `field "${field}.rope_type" (or "${field}.type") must be a string, got ${describe(kind)}`);
  return kind;
}

function parseScaling(rs: Json | null, field: string, top: Json, ctx: RopeContext, rotaryDim: number): RopeScaling | null {
  if (rs === null) return null;
  const { file } = ctx;
  let kind = scalingKind(rs, field, file);
  if (ctx.architecture === 'phi3' && (kind === 'su' || kind === 'yarn')) kind = 'longrope'; // as Phi3Config renames them
  const p = `${field}.`;
  if (kind === 'default') return null;
  if (kind === 'linear') return { type: 'linear', factor: posFinite(rs, 'factor', file, undefined, p) };
  if (kind === 'llama3') {
    const factor = posFinite(rs, 'factor', file, undefined, p);
    const lowFreqFactor = posFinite(rs, 'low_freq_factor', file, undefined, p);
    const highFreqFactor = posFinite(rs, 'high_freq_factor', file, undefined, p);
    const originalMaxPositionEmbeddings = posInt(rs, 'original_max_position_embeddings', file, p);
    if (!(highFreqFactor > lowFreqFactor)) {
      throw fmt(file, `field "${field}.high_freq_factor" (${highFreqFactor}) must be greater than "${field}.low_freq_factor" (${lowFreqFactor})`);
    }
    return { type: 'llama3', factor, lowFreqFactor, highFreqFactor, originalMaxPositionEmbeddings };
  }
  if (kind === 'longrope') {
    // transformers prefers a top-level original_max_position_embeddings (Phi3Config always has
    // one, 4096 by default) over the one inside the scaling object
    let originalMax: number;
    if (top.original_max_position_embeddings !== undefined && top.original_max_position_embeddings !== null) {
      originalMax = posInt(top, 'original_max_position_embeddings', file);
    } else if (ctx.architecture === 'phi3') {
      originalMax = 4096;
    } else {
      originalMax = rs.original_max_position_embeddings === undefined ? ctx.maxPositionEmbeddings : posInt(rs, 'original_max_position_embeddings', file, p);
    }
    const factor = posFinite(rs, 'factor', file, ctx.maxPositionEmbeddings / originalMax, p);
    const attentionFactor = posFinite(rs, 'attention_factor', file, factor <= 1 ? 1 : Math.sqrt(1 + Math.log(factor) / Math.log(originalMax)), p);
    return {
      type: 'longrope',
      shortFactor: posFiniteArray(rs, 'short_factor', file, rotaryDim / 2, p),
      longFactor: posFiniteArray(rs, 'long_factor', file, rotaryDim / 2, p),
      originalMaxPositionEmbeddings: originalMax,
      attentionFactor,
    };
  }
  throw unsupported(
    file,
    `rope scaling type "${kind}" (field "${field}.rope_type") is not supported; supported: "llama3", "linear", "longrope" (or none)`,
  );
}

function rotaryDimOf(prf: unknown, field: string, ctx: RopeContext): number {
  const { file, headDim } = ctx;
  if (prf === undefined || prf === null || prf === 1) return headDim;
  if (typeof prf !== 'number' || !Number.isFinite(prf) || prf <= 0 || prf > 1) {
    throw fmt(file, `field "${field}" must be a number in (0, 1], got ${describe(prf)}`);
  }
  if (ctx.architecture !== 'phi3') throw unsupported(file, `field "${field}" (${prf}) is only supported for Phi-3`);
  const dim = Math.trunc(headDim * prf); // int(head_dim * partial_rotary_factor), as transformers
  if (dim < 2 || dim % 2 !== 0) throw fmt(file, `field "${field}" (${prf}) gives ${dim} rotary dims of head_dim ${headDim}; it must be even and at least 2`);
  return dim;
}

/** The RoPE settings of a config.json object (WEFT_MODEL_FORMAT / WEFT_UNSUPPORTED_ARCH naming the field). */
export function parseRope(obj: Json, ctx: RopeContext, defaultTheta: number): RopeConfig {
  const { file } = ctx;
  const topTheta = posFinite(obj, 'rope_theta', file, defaultTheta);
  const rp = optObject(obj, 'rope_parameters', file);
  if (rp !== null && ('full_attention' in rp || 'sliding_attention' in rp)) {
    if (ctx.architecture !== 'gemma3') {
      throw unsupported(file, 'field "rope_parameters" has per-layer-type RoPE parameters, which only Gemma 3 supports');
    }
    const field = 'rope_parameters.full_attention';
    const full = optObject(rp, 'full_attention', file, 'rope_parameters.') ?? {};
    const sliding = optObject(rp, 'sliding_attention', file, 'rope_parameters.') ?? {};
    if (Object.keys(sliding).length > 0 && scalingKind(sliding, 'rope_parameters.sliding_attention', file) !== 'default') {
      throw unsupported(file, 'field "rope_parameters.sliding_attention.rope_type" must be "default" (scaled local RoPE is not supported)');
    }
    const fullScaling = Object.keys(full).length > 0 ? full : null;
    return {
      ropeTheta: posFinite(full, 'rope_theta', file, topTheta, `${field}.`),
      ...split(parseScaling(fullScaling, field, obj, ctx, ctx.headDim)),
      rotaryDim: ctx.headDim,
      ropeLocalTheta: posFinite(sliding, 'rope_theta', file, posFinite(obj, 'rope_local_base_freq', file, 10000), 'rope_parameters.sliding_attention.'),
    };
  }
  const ropeLocalTheta = ctx.architecture === 'gemma3' ? posFinite(obj, 'rope_local_base_freq', file, 10000) : null;
  if (rp !== null) {
    if (rp.rope_type === undefined && rp.type === undefined) {
      throw unsupported(file, 'field "rope_parameters" has no "rope_type"');
    }
    const rotaryDim = rotaryDimOf(rp.partial_rotary_factor ?? obj.partial_rotary_factor, 'partial_rotary_factor', ctx);
    return {
      ropeTheta: posFinite(rp, 'rope_theta', file, topTheta, 'rope_parameters.'),
      ...split(parseScaling(rp, 'rope_parameters', obj, ctx, rotaryDim)),
      rotaryDim,
      ropeLocalTheta,
    };
  }
  const rotaryDim = rotaryDimOf(obj.partial_rotary_factor, 'partial_rotary_factor', ctx);
  return {
    ropeTheta: topTheta,
    ...split(parseScaling(optObject(obj, 'rope_scaling', file), 'rope_scaling', obj, ctx, rotaryDim)),
    rotaryDim,
    ropeLocalTheta,
  };
}
