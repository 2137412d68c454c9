/**
 * Maps an architecture's tensor names (Hugging Face layout) to TensorInfos and checks every
 * shape against config.json. In an FP8 checkpoint, each FP8 linear weight's scale tensor is found
 * beside it (src/engine/fp8.ts).
 */
import { WeftError } from '../errors.js';
import type { ModelConfig } from './config.js';
import { fp8Scale, type Fp8Scale } from './fp8.js';
import type { NativeTensorSpec } from './native.js';
import type { TensorInfo } from './safetensors.js';

export interface LayerWeights {
  inputNorm: TensorInfo;
  /** Phi-3's fused qkv_proj / gate_up_proj: q/k/v and gate/up are then row ranges of them. */
  qkv?: TensorInfo;
  gateUp?: TensorInfo;
  q: TensorInfo;
  k: TensorInfo;
  v: TensorInfo;
  o: TensorInfo;
  qBias?: TensorInfo;
  kBias?: TensorInfo;
  vBias?: TensorInfo;
  oBias?: TensorInfo;
  /** per-head q/k norms (Qwen3, Gemma 3) */
  qNorm?: TensorInfo;
  kNorm?: TensorInfo;
  /** the norm before the MLP: Llama's post_attention_layernorm, Gemma's pre_feedforward_layernorm */
  postNorm: TensorInfo;
  /** Gemma: post_attention_layernorm and post_feedforward_layernorm, on the block outputs */
  attnOutNorm?: TensorInfo;
  ffnOutNorm?: TensorInfo;
  gate: TensorInfo;
  up: TensorInfo;
  down: TensorInfo;
}

export interface ModelWeights {
  embed: TensorInfo;
  layers: LayerWeights[];
  norm: TensorInfo;
  /** = embed when the embeddings are tied */
  lmHead: TensorInfo;
  /** The scales of the FP8 (F8_E4M3) linear weights, by weight; empty for a float checkpoint. */
  scales: Map<TensorInfo, Fp8Scale>;
}

function shapeStr(s: readonly number[]): string {
  return `[${s.join(', ')}]`;
}

/** Rows [first, first + count) of a matrix: the same bytes, no copy. */
function rowRange(t: TensorInfo, part: string, first: number, count: number): TensorInfo {
  const rowBytes = t.nbytes / t.shape[0]!;
  return { ...t, name: `${t.name}[${part}]`, shape: [count, ...t.shape.slice(1)], offset: t.offset + first * rowBytes, nbytes: count * rowBytes };
}

/** Where the text model's tensors are: "model." or, in a multimodal Gemma 3 checkpoint, its language model's. */
function prefixes(tensors: Map<string, TensorInfo>): { model: string; lmHead: string } {
  for (const [model, lmHead] of [
    ['model.', 'lm_head.weight'],
    ['model.language_model.', 'lm_head.weight'],
    ['language_model.model.', 'language_model.lm_head.weight'],
  ]) {
    if (tensors.has(`${model}embed_tokens.weight`)) return { model: model!, lmHead: lmHead! };
  }
  return { model: 'model.', lmHead: 'lm_head.weight' };
}

/** Finds every tensor the architecture needs and checks its shape. Throws WeftError. */
export function resolveWeights(config: ModelConfig, tensors: Map<string, TensorInfo>): ModelWeights {
  const scales = new Map<TensorInfo, Fp8Scale>();
  /** `linear`: a layer's projection, which an FP8 checkpoint may store as F8_E4M3 with a scale. */
  const get = (name: string, shape: number[], linear = false): TensorInfo => {
    const t = tensors.get(name);
    if (!t) {
      throw new WeftError(
        'WEFT_TENSOR_MISSING',
        `tensor "${name}" (expected shape ${shapeStr(shape)}) is not in the checkpoint`,
      );
    }
    if (t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i])) {
      throw new WeftError(
        'WEFT_TENSOR_SHAPE',
        `tensor "${name}" in ${t.file} has shape ${shapeStr(t.shape)}, expected ${shapeStr(shape)} from config.json`,
      );
    }
    if (t.dtype === 'F8_E4M3') {
      if (!linear) {
        throw new WeftError('WEFT_UNSUPPORTED_DTYPE', `${t.file}: tensor "${name}" is F8_E4M3; only the layers' linear weights may be FP8 (embeddings, LM head, norms and biases stay in float)`);
      }
      scales.set(t, fp8Scale(config.fp8, tensors, t));
    }
    return t;
  };
  const linear = (name: string, shape: number[]): TensorInfo => get(name, shape, true);

  const H = config.hiddenSize;
  const D = config.headDim;
  const qDim = config.numHeads * D;
  const kvDim = config.numKvHeads * D;
  const F = config.intermediateSize;
  const V = config.vocabSize;
  const gemma = config.sandwichNorms;
  const fused = config.architecture === 'phi3';
  const { model, lmHead: lmHeadName } = prefixes(tensors);

  const embed = get(`${model}embed_tokens.weight`, [V, H]);
  const layers: LayerWeights[] = [];
  for (let i = 0; i < config.numLayers; i++) {
    const p = `${model}layers.${i}.`;
    const a = `${p}self_attn.`;
    let attn: Pick<LayerWeights, 'qkv' | 'q' | 'k' | 'v'>;
    let mlp: Pick<LayerWeights, 'gateUp' | 'gate' | 'up'>;
    if (fused || tensors.has(`${a}qkv_proj.weight`)) {
      const qkv = linear(`${a}qkv_proj.weight`, [qDim + 2 * kvDim, H]);
      attn = { qkv, q: rowRange(qkv, 'q', 0, qDim), k: rowRange(qkv, 'k', qDim, kvDim), v: rowRange(qkv, 'v', qDim + kvDim, kvDim) };
    } else {
      attn = { q: linear(`${a}q_proj.weight`, [qDim, H]), k: linear(`${a}k_proj.weight`, [kvDim, H]), v: linear(`${a}v_proj.weight`, [kvDim, H]) };
    }
    // fused in Phi-3 checkpoints, and in engine plans (weft build) of every architecture
    if (fused || tensors.has(`${p}mlp.gate_up_proj.weight`)) {
      const gateUp = linear(`${p}mlp.gate_up_proj.weight`, [2 * F, H]);
      mlp = { gateUp, gate: rowRange(gateUp, 'gate', 0, F), up: rowRange(gateUp, 'up', F, F) };
    } else {
      mlp = { gate: linear(`${p}mlp.gate_proj.weight`, [F, H]), up: linear(`${p}mlp.up_proj.weight`, [F, H]) };
    }
    const lw: LayerWeights = {
      inputNorm: get(`${p}input_layernorm.weight`, [H]),
      ...attn,
      o: linear(`${a}o_proj.weight`, [H, qDim]),
      postNorm: get(gemma ? `${p}pre_feedforward_layernorm.weight` : `${p}post_attention_layernorm.weight`, [H]),
      ...mlp,
      down: linear(`${p}mlp.down_proj.weight`, [H, F]),
    };
    if (config.attentionBias) {
      lw.qBias = get(`${a}q_proj.bias`, [qDim]);
      lw.kBias = get(`${a}k_proj.bias`, [kvDim]);
      lw.vBias = get(`${a}v_proj.bias`, [kvDim]);
    }
    if (config.outputBias) lw.oBias = get(`${a}o_proj.bias`, [H]);
    if (config.qkNorm) {
      lw.qNorm = get(`${a}q_norm.weight`, [D]);
      lw.kNorm = get(`${a}k_norm.weight`, [D]);
    }
    if (gemma) {
      lw.attnOutNorm = get(`${p}post_attention_layernorm.weight`, [H]);
      lw.ffnOutNorm = get(`${p}post_feedforward_layernorm.weight`, [H]);
    }
    layers.push(lw);
  }
  const norm = get(`${model}norm.weight`, [H]);
  const lmHead = config.tieWordEmbeddings ? embed : get(lmHeadName, [V, H]);
  return { embed, layers, norm, lmHead, scales };
}

/** The files to map and each tensor's place in them, under the native engine's names. */
export function tensorSpecs(weights: ModelWeights): { files: string[]; specs: NativeTensorSpec[] } {
  const files: string[] = [];
  const specs: NativeTensorSpec[] = [];
  const fileIndex = (f: string): number => {
    const i = files.indexOf(f);
    return i >= 0 ? i : files.push(f) - 1;
  };
  const add = (name: string, t: TensorInfo | undefined) => {
    if (!t) return;
    const spec: NativeTensorSpec = { name, file: fileIndex(t.file), offset: t.offset, nbytes: t.nbytes, dtype: t.dtype, shape: t.shape };
    const s = weights.scales.get(t);
    if (s) {
      const { tensor: st, block, grid } = s;
      spec.scale = { file: fileIndex(st.file), offset: st.offset, nbytes: st.nbytes, dtype: st.dtype, grid, block };
    }
    specs.push(spec);
  };
  add('embed', weights.embed);
  if (weights.lmHead !== weights.embed) add('lm_head', weights.lmHead);
  add('norm', weights.norm);
  weights.layers.forEach((L, i) => {
    const p = `layers.${i}.`;
    add(p + 'input_norm', L.inputNorm);
    add(p + 'post_norm', L.postNorm);
    // fused tensors go whole: the native side takes their row ranges
    if (L.qkv) add(p + 'qkv', L.qkv);
    else for (const k of ['q', 'k', 'v'] as const) add(p + k, L[k]);
    if (L.gateUp) add(p + 'gate_up', L.gateUp);
    else for (const k of ['gate', 'up'] as const) add(p + k, L[k]);
    add(p + 'o', L.o);
    add(p + 'down', L.down);
    add(p + 'q_bias', L.qBias);
    add(p + 'k_bias', L.kBias);
    add(p + 'v_bias', L.vBias);
    add(p + 'o_bias', L.oBias);
    add(p + 'q_norm', L.qNorm);
    add(p + 'k_norm', L.kNorm);
    add(p + 'attn_out_norm', L.attnOutNorm);
    add(p + 'ffn_out_norm', L.ffnOutNorm);
  });
  return { files, specs };
}
