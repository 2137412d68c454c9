/**
 * Maps an architecture's tensor names (Hugging Face layout) to TensorInfos and checks every
 * shape against config.json.
 */
import { WeftError } from '../errors.js';
import type { ModelConfig } from './config.js';
import type { NativeTensorSpec } from './native.js';
import type { TensorInfo } from './safetensors.js';

export interface LayerWeights {
  inputNorm: TensorInfo;
  q: TensorInfo;
  k: TensorInfo;
  v: TensorInfo;
  o: TensorInfo;
  qBias?: TensorInfo;
  kBias?: TensorInfo;
  vBias?: TensorInfo;
  postNorm: TensorInfo;
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
}

function shapeStr(s: readonly number[]): string {
  return `[${s.join(', ')}]`;
}

/** Finds every tensor the architecture needs and checks its shape. Throws WeftError. */
export function resolveWeights(config: ModelConfig, tensors: Map<string, TensorInfo>): ModelWeights {
  const get = (name: string, shape: number[]): TensorInfo => {
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
    return t;
  };

  const H = config.hiddenSize;
  const qDim = config.numHeads * config.headDim;
  const kvDim = config.numKvHeads * config.headDim;
  const F = config.intermediateSize;
  const V = config.vocabSize;

  const embed = get('model.embed_tokens.weight', [V, H]);
  const layers: LayerWeights[] = [];
  for (let i = 0; i < config.numLayers; i++) {
    const p = `model.layers.${i}.`;
    const lw: LayerWeights = {
      inputNorm: get(`${p}input_layernorm.weight`, [H]),
      q: get(`${p}self_attn.q_proj.weight`, [qDim, H]),
      k: get(`${p}self_attn.k_proj.weight`, [kvDim, H]),
      v: get(`${p}self_attn.v_proj.weight`, [kvDim, H]),
      o: get(`${p}self_attn.o_proj.weight`, [H, qDim]),
      postNorm: get(`${p}post_attention_layernorm.weight`, [H]),
      gate: get(`${p}mlp.gate_proj.weight`, [F, H]),
      up: get(`${p}mlp.up_proj.weight`, [F, H]),
      down: get(`${p}mlp.down_proj.weight`, [H, F]),
    };
    if (config.attentionBias) {
      lw.qBias = get(`${p}self_attn.q_proj.bias`, [qDim]);
      lw.kBias = get(`${p}self_attn.k_proj.bias`, [kvDim]);
      lw.vBias = get(`${p}self_attn.v_proj.bias`, [kvDim]);
    }
    layers.push(lw);
  }
  const norm = get('model.norm.weight', [H]);
  let lmHead: TensorInfo;
  if (config.tieWordEmbeddings) {
    lmHead = embed;
  } else {
    lmHead = get('lm_head.weight', [V, H]);
  }
  return { embed, layers, norm, lmHead };
}

/** The files to map and each tensor's place in them, under the native engine's names. */
export function tensorSpecs(weights: ModelWeights): { files: string[]; specs: NativeTensorSpec[] } {
  const files: string[] = [];
  const specs: NativeTensorSpec[] = [];
  const add = (name: string, t: TensorInfo) => {
    let file = files.indexOf(t.file);
    if (file < 0) file = files.push(t.file) - 1;
    specs.push({ name, file, offset: t.offset, nbytes: t.nbytes, dtype: t.dtype, shape: t.shape });
  };
  add('embed', weights.embed);
  if (weights.lmHead !== weights.embed) add('lm_head', weights.lmHead);
  add('norm', weights.norm);
  weights.layers.forEach((L, i) => {
    const p = `layers.${i}.`;
    add(p + 'input_norm', L.inputNorm);
    add(p + 'post_norm', L.postNorm);
    for (const k of ['q', 'k', 'v', 'o', 'gate', 'up', 'down'] as const) add(p + k, L[k]);
    if (L.qBias) add(p + 'q_bias', L.qBias);
    if (L.kBias) add(p + 'k_bias', L.kBias);
    if (L.vBias) add(p + 'v_bias', L.vBias);
  });
  return { files, specs };
}
