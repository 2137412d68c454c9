/**
 * A GGUF file as a model: its metadata turned into the config.json that Hugging Face would have
 * (then normalized by config.ts like any other), its tensors renamed to the Hugging Face names
 * (then resolved by weights.ts), each still pointing into the file (memory-mapped, never copied).
 *
 * Facts from llama.cpp's conventions (the GGUF files people have were written by its converter):
 *  - keys are `{arch}.context_length`, `{arch}.embedding_length`, `{arch}.block_count`,
 *    `{arch}.feed_forward_length`, `{arch}.attention.head_count[_kv]`, `{arch}.attention.key_length`,
 *    `{arch}.attention.layer_norm_rms_epsilon`, `{arch}.rope.freq_base`, `{arch}.rope.dimension_count`;
 *  - llama-arch files have their Q and K rows permuted per head from rotate_half pairs (i, i + d/2)
 *    to interleaved pairs (2i, 2i + 1): weft rotates the pairs as they lie (`ropeInterleaved`),
 *    which gives the same attention as un-permuting the rows, without touching the mapping;
 *  - Llama 3 RoPE scaling travels as a `rope_freqs.weight` tensor of per-frequency divisors,
 *    Phi-3's LongRoPE as `rope_factors_long/short.weight` with `rope.scaling.original_context_length`
 *    and `rope.scaling.attn_factor`;
 *  - Gemma norms are stored with the 1 already added (w + 1); Gemma's sliding layers come from
 *    `attention.sliding_window` and `attention.sliding_window_pattern` (default: every 6th layer
 *    global for Gemma 3, every 2nd for Gemma 2), their RoPE base from `rope.freq_base_swa`; the
 *    attention scale is llama.cpp's fixed one (gguf-llamacpp.ts).
 */
import { WeftError } from '../errors.js';
import { GEMMA2_DEFAULTS, GEMMA_DEFAULT_SWA_PATTERN, gemmaQueryPreAttnScalar, swaLayersOfPattern } from './gguf-llamacpp.js';
import type { TensorInfo } from './safetensors.js';

/** What the model mapping needs of a parsed GGUF file (src/engine/gguf.ts gives it). */
export interface GgufModelInput {
  file: string;
  metadata: Map<string, unknown>;
  tensors: TensorInfo[];
}

export const GGUF_ARCHITECTURES = ['llama', 'qwen2', 'qwen3', 'gemma2', 'gemma3', 'phi3'] as const;
export type GgufArchitecture = (typeof GGUF_ARCHITECTURES)[number];

const HF_CLASS: Record<GgufArchitecture, string> = {
  llama: 'LlamaForCausalLM',
  qwen2: 'Qwen2ForCausalLM',
  qwen3: 'Qwen3ForCausalLM',
  gemma2: 'Gemma2ForCausalLM',
  gemma3: 'Gemma3ForCausalLM',
  phi3: 'Phi3ForCausalLM',
};

/** GGUF per-layer tensor name → Hugging Face name (after `model.layers.N.`), by architecture. */
const LAYER_NAMES: Record<string, string> = {
  'attn_norm.weight': 'input_layernorm.weight',
  'attn_q.weight': 'self_attn.q_proj.weight',
  'attn_k.weight': 'self_attn.k_proj.weight',
  'attn_v.weight': 'self_attn.v_proj.weight',
  'attn_q.bias': 'self_attn.q_proj.bias',
  'attn_k.bias': 'self_attn.k_proj.bias',
  'attn_v.bias': 'self_attn.v_proj.bias',
  'attn_qkv.weight': 'self_attn.qkv_proj.weight',
  'attn_output.weight': 'self_attn.o_proj.weight',
  'attn_output.bias': 'self_attn.o_proj.bias',
  'attn_q_norm.weight': 'self_attn.q_norm.weight',
  'attn_k_norm.weight': 'self_attn.k_norm.weight',
  'ffn_norm.weight': 'post_attention_layernorm.weight',
  'ffn_gate.weight': 'mlp.gate_proj.weight',
  'ffn_up.weight': 'mlp.up_proj.weight',
  'ffn_down.weight': 'mlp.down_proj.weight',
};
/** Gemma has four norms per layer; its `ffn_norm` is the pre-feed-forward one. */
const GEMMA_NAMES: Record<string, string> = {
  ...LAYER_NAMES,
  'post_attention_norm.weight': 'post_attention_layernorm.weight',
  'ffn_norm.weight': 'pre_feedforward_layernorm.weight',
  'post_ffw_norm.weight': 'post_feedforward_layernorm.weight',
};
/** Phi-3 fuses gate and up into `ffn_up` (2 x intermediate rows). */
const PHI3_NAMES: Record<string, string> = { ...LAYER_NAMES, 'ffn_up.weight': 'mlp.gate_up_proj.weight' };

function fmt(file: string, msg: string): WeftError {
  return new WeftError('WEFT_MODEL_FORMAT', `${file}: ${msg}`);
}

class Meta {
  constructor(
    readonly file: string,
    readonly m: Map<string, unknown>,
  ) {}
  has(key: string): boolean {
    return this.m.has(key);
  }
  num(key: string, dflt?: number): number {
    const v = this.m.get(key);
    if (v === undefined) {
      if (dflt === undefined) throw fmt(this.file, `metadata key "${key}" is missing`);
      return dflt;
    }
    const n = typeof v === 'bigint' ? Number(v) : v;
    if (typeof n !== 'number' || !Number.isFinite(n)) throw fmt(this.file, `metadata key "${key}" must be a number, got ${typeof v}`);
    return n;
  }
  int(key: string, dflt?: number): number {
    const n = this.num(key, dflt);
    if (!Number.isSafeInteger(n) || n < 0) throw fmt(this.file, `metadata key "${key}" must be a non-negative integer, got ${n}`);
    return n;
  }
  str(key: string): string | undefined {
    const v = this.m.get(key);
    if (v === undefined) return undefined;
    if (typeof v !== 'string') throw fmt(this.file, `metadata key "${key}" must be a string`);
    return v;
  }
  /** A per-layer value: llama.cpp writes some (head_count_kv, ...) as arrays for varying layers. */
  uniform(key: string, dflt?: number): number {
    const v = this.m.get(key);
    if (Array.isArray(v)) {
      const vals = [...new Set(v.map(Number))];
      if (vals.length !== 1) throw new WeftError('WEFT_UNSUPPORTED_ARCH', `${this.file}: "${key}" varies across layers (${vals.slice(0, 4).join(', ')}…), which weft does not support`);
      return vals[0]!;
    }
    return this.int(key, dflt);
  }
}

/** The architecture a GGUF file declares (WEFT_UNSUPPORTED_ARCH for others). */
export function ggufArchitecture(input: GgufModelInput): GgufArchitecture {
  const arch = input.metadata.get('general.architecture');
  if (typeof arch !== 'string') throw fmt(input.file, 'metadata key "general.architecture" is missing or not a string');
  if (!(GGUF_ARCHITECTURES as readonly string[]).includes(arch)) {
    throw new WeftError(
      'WEFT_UNSUPPORTED_ARCH',
      `${input.file}: architecture "${arch}" (general.architecture) is not supported; supported: ${GGUF_ARCHITECTURES.join(', ')}`,
    );
  }
  return arch as GgufArchitecture;
}

/** Per-layer sliding flags from `{arch}.attention.sliding_window_pattern`: a bool (or 0/1) per layer, or a uint pattern. */
function slidingLayers(k: Meta, key: string, numLayers: number, dflt: number): boolean[] {
  const v = k.m.get(key);
  if (!Array.isArray(v)) return swaLayersOfPattern(k.int(key, dflt), numLayers);
  if (v.length !== numLayers) throw fmt(k.file, `"${key}" has ${v.length} entries, expected one per layer (${numLayers})`);
  return v.map((x) => Boolean(Number(x)));
}

const layerTypes = (sliding: boolean[]): string[] => sliding.map((s) => (s ? 'sliding_attention' : 'full_attention'));

/**
 * The config.json Hugging Face would have for this file, and what config.ts cannot know from it:
 * whether RoPE pairs are interleaved, per-frequency RoPE divisors, and whether norm weights
 * already hold Gemma's +1. Where llama.cpp derives a setting rather than reading it (Gemma's
 * attention scale, its default window pattern, Gemma 2's soft-caps), the JSON says what llama.cpp
 * derives (gguf-llamacpp.ts).
 */
export function ggufHfConfig(input: GgufModelInput): {
  json: Record<string, unknown>;
  ropeInterleaved: boolean;
  /** Tensors of per-frequency RoPE divisors to read into rope_scaling (LongRoPE's short/long factors) and its cos/sin factor. */
  ropeFactorTensors: { short: string; long: string; attentionFactor: number } | null;
  normsIncludeOne: boolean;
} {
  const arch = ggufArchitecture(input);
  const k = new Meta(input.file, input.metadata);
  const p = arch + '.';
  const tensorByName = new Map(input.tensors.map((t) => [t.name, t]));
  const embd = tensorByName.get('token_embd.weight');
  if (!embd) throw new WeftError('WEFT_TENSOR_MISSING', `${input.file}: tensor "token_embd.weight" is missing`);
  const hidden = k.int(p + 'embedding_length');
  const heads = k.uniform(p + 'attention.head_count');
  const numLayers = k.int(p + 'block_count');
  const tokens = input.metadata.get('tokenizer.ggml.tokens');
  const vocab = k.has(p + 'vocab_size') ? k.int(p + 'vocab_size') : embd.shape[0]!;
  if (embd.shape[0] !== vocab) throw fmt(input.file, `token_embd.weight has ${embd.shape[0]} rows but the vocabulary has ${vocab} tokens`);
  if (Array.isArray(tokens) && tokens.length !== vocab) throw fmt(input.file, `tokenizer.ggml.tokens has ${tokens.length} tokens but token_embd.weight has ${vocab} rows`);
  const headDim = k.int(p + 'attention.key_length', Math.floor(hidden / heads));
  if (k.has(p + 'attention.value_length') && k.int(p + 'attention.value_length') !== headDim) {
    throw new WeftError('WEFT_UNSUPPORTED_ARCH', `${input.file}: key_length ${headDim} differs from value_length ${k.int(p + 'attention.value_length')}`);
  }
  const json: Record<string, unknown> = {
    architectures: [HF_CLASS[arch]],
    hidden_size: hidden,
    num_hidden_layers: numLayers,
    num_attention_heads: heads,
    num_key_value_heads: k.uniform(p + 'attention.head_count_kv', heads),
    head_dim: headDim,
    intermediate_size: k.uniform(p + 'feed_forward_length'),
    vocab_size: vocab,
    max_position_embeddings: k.int(p + 'context_length'),
    rms_norm_eps: k.num(p + 'attention.layer_norm_rms_epsilon', 1e-6),
    rope_theta: k.num(p + 'rope.freq_base', 10000),
    tie_word_embeddings: !tensorByName.has('output.weight'),
  };
  const bos = input.metadata.get('tokenizer.ggml.bos_token_id');
  const eos = input.metadata.get('tokenizer.ggml.eos_token_id');
  if (bos !== undefined) json.bos_token_id = Number(bos);
  if (eos !== undefined) json.eos_token_id = Number(eos);
  const biased = tensorByName.has('blk.0.attn_q.bias') || tensorByName.has('blk.0.attn_output.bias');
  if (biased && arch !== 'qwen2') json.attention_bias = true; // Qwen2 always has q/k/v biases

  // RoPE scaling as llama.cpp reads it: a factor without a type is linear; Phi-3's LongRoPE comes as tensors
  const ropeFactor = k.num(p + 'rope.scaling.factor', k.num(p + 'rope.scale_linear', 0));
  const ropeType = k.str(p + 'rope.scaling.type') ?? (ropeFactor !== 0 ? 'linear' : 'none');
  if (ropeType === 'linear' && ropeFactor !== 0 && ropeFactor !== 1) json.rope_scaling = { rope_type: 'linear', factor: ropeFactor };
  else if (ropeType !== 'linear' && ropeType !== 'none' && !(arch === 'phi3' && ropeType === 'longrope')) {
    throw new WeftError('WEFT_UNSUPPORTED_ARCH', `${input.file}: rope scaling "${ropeType}" (${p}rope.scaling.type) is not supported`);
  }
  const rotary = k.int(p + 'rope.dimension_count', headDim);
  if (rotary !== headDim) {
    if (arch !== 'phi3') throw new WeftError('WEFT_UNSUPPORTED_ARCH', `${input.file}: partial rotary (${rotary} of ${headDim}) is only supported for phi3`);
    json.partial_rotary_factor = rotary / headDim;
  }

  // Sliding windows: Gemma's by llama.cpp's rules; the others' from the keys weft's exporter writes
  // (llama.cpp's llama, qwen2 and qwen3 ignore them, and disables Phi-3's; weft keeps the model's)
  const window = k.int(p + 'attention.sliding_window', arch === 'gemma2' ? GEMMA2_DEFAULTS.slidingWindow : 0);
  const pattern = p + 'attention.sliding_window_pattern';
  if (arch === 'gemma2' || arch === 'gemma3') {
    const sliding = window > 0 ? slidingLayers(k, pattern, numLayers, GEMMA_DEFAULT_SWA_PATTERN[arch]) : new Array<boolean>(numLayers).fill(false);
    json.layer_types = layerTypes(sliding);
    if (window > 0) json.sliding_window = window;
  } else if (window > 0 && arch === 'llama') {
    if (biased) throw new WeftError('WEFT_UNSUPPORTED_ARCH', `${input.file}: a llama-arch file with both a sliding window and attention biases is not supported`);
    json.architectures = ['MistralForCausalLM'];
    json.sliding_window = window;
  } else if (window > 0 && (arch === 'qwen2' || arch === 'qwen3')) {
    json.use_sliding_window = true;
    json.sliding_window = window;
    json.layer_types = layerTypes(k.has(pattern) ? slidingLayers(k, pattern, numLayers, 0) : new Array<boolean>(numLayers).fill(true));
  } else if (window > 0 && arch === 'phi3') {
    json.sliding_window = window;
  }

  if (arch === 'gemma2' || arch === 'gemma3') {
    json.model_type = arch === 'gemma3' ? 'gemma3_text' : 'gemma2';
    json.hidden_activation = 'gelu_pytorch_tanh';
    json.query_pre_attn_scalar = gemmaQueryPreAttnScalar(arch, numLayers, hidden, heads, headDim);
    const localBase = k.num(p + 'rope.freq_base_swa', arch === 'gemma3' ? 10000 : (json.rope_theta as number));
    if (arch === 'gemma3') json.rope_local_base_freq = localBase;
    else if (localBase !== json.rope_theta) throw new WeftError('WEFT_UNSUPPORTED_ARCH', `${input.file}: a Gemma 2 local RoPE base (${p}rope.freq_base_swa) other than the global one is not supported`);
    if (arch === 'gemma2') {
      json.attn_logit_softcapping = k.num(p + 'attn_logit_softcapping', GEMMA2_DEFAULTS.attnLogitSoftcap);
      json.final_logit_softcapping = k.num(p + 'final_logit_softcapping', GEMMA2_DEFAULTS.finalLogitSoftcap);
    } else {
      const cap = k.num(p + 'final_logit_softcapping', 0); // 0: none
      json.final_logit_softcapping = cap === 0 ? null : cap;
    }
  }
  if (arch === 'phi3') json.original_max_position_embeddings = k.int(p + 'rope.scaling.original_context_length', json.max_position_embeddings as number);
  let ropeFactorTensors: { short: string; long: string; attentionFactor: number } | null = null;
  if (arch === 'llama' && tensorByName.has('rope_freqs.weight')) {
    // Llama 3 scaling as llama.cpp stores it: one divisor per frequency, whatever the length
    ropeFactorTensors = { short: 'rope_freqs.weight', long: 'rope_freqs.weight', attentionFactor: 1 };
    json.original_max_position_embeddings = json.max_position_embeddings;
  } else if (arch === 'phi3' && tensorByName.has('rope_factors_long.weight')) {
    ropeFactorTensors = { short: 'rope_factors_short.weight', long: 'rope_factors_long.weight', attentionFactor: k.num(p + 'rope.scaling.attn_factor', 1) };
  }
  return { json, ropeInterleaved: arch === 'llama', ropeFactorTensors, normsIncludeOne: arch === 'gemma2' || arch === 'gemma3' };
}

/** The file's tensors under Hugging Face names (weights.ts resolves and checks them). */
export function ggufHfTensors(input: GgufModelInput): Map<string, TensorInfo> {
  const arch = ggufArchitecture(input);
  const names = arch === 'gemma2' || arch === 'gemma3' ? GEMMA_NAMES : arch === 'phi3' ? PHI3_NAMES : LAYER_NAMES;
  const out = new Map<string, TensorInfo>();
  for (const t of input.tensors) {
    let hf: string | undefined;
    if (t.name === 'token_embd.weight') hf = 'model.embed_tokens.weight';
    else if (t.name === 'output_norm.weight') hf = 'model.norm.weight';
    else if (t.name === 'output.weight') hf = 'lm_head.weight';
    else {
      const m = /^blk\.(\d+)\.(.+)$/.exec(t.name);
      const rest = m ? names[m[2]!] : undefined;
      if (m && rest) hf = `model.layers.${m[1]}.${rest}`;
    }
    // tensors weft does not use (rope_freqs, rope factors, ...) keep their GGUF names
    out.set(hf ?? t.name, { ...t, name: hf ?? t.name });
  }
  return out;
}
