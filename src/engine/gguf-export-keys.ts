/**
 * The `{arch}.*` metadata of a GGUF export, per architecture, as llama.cpp's converter writes it
 * (convert_hf_to_gguf.py: TextModel.set_gguf_parameters and the overrides in conversion/llama.py,
 * qwen.py, gemma.py, phi.py). Where the converter's file would not run as the checkpoint, keys
 * that llama.cpp defines (llama-arch.cpp) are added, only then:
 *  - Gemma: `attention.sliding_window_pattern` (a bool per layer, which llama.cpp's Gemma loaders
 *    read; the converter never writes it, so they assume every 6th / 2nd layer global) when the
 *    layers differ from that; Gemma 2's `rope.freq_base` when not llama.cpp's default 10000;
 *  - Mistral (llama arch), Qwen2, Qwen3: `attention.sliding_window` and, for Qwen, the per-layer
 *    pattern. llama.cpp's llama / qwen2 / qwen3 loaders ignore both (it runs these files without
 *    windows); weft reads them.
 * Keys the converter writes with the value llama.cpp derives anyway follow its choice too (vocab_size
 * and rope.dimension_count for llama only; key_length where transformers' config has head_dim).
 */
import { WeftError } from '../errors.js';
import type { ModelConfig } from './config.js';
import { meta, GgufType, type GgufMeta } from './gguf.js';
import { GEMMA_DEFAULT_SWA_PATTERN, swaLayersOfPattern } from './gguf-llamacpp.js';

export type GgufExportArch = 'llama' | 'qwen2' | 'qwen3' | 'gemma2' | 'gemma3' | 'phi3';

/** general.architecture for a checkpoint: Mistral is llama.cpp's llama. */
export function ggufExportArch(c: ModelConfig): GgufExportArch {
  return c.architecture === 'mistral' ? 'llama' : c.architecture;
}

function unsupported(dir: string, what: string): WeftError {
  return new WeftError('WEFT_UNSUPPORTED_ARCH', `${dir}: ${what}, which a GGUF file cannot carry for llama.cpp`);
}

/** The one window width of the sliding layers (0: none). */
function windowWidth(c: ModelConfig, dir: string): number {
  const widths = [...new Set(c.layerWindows.filter((w) => w > 0))];
  if (widths.length > 1) throw unsupported(dir, `sliding windows of different widths (${widths.join(', ')})`);
  return widths[0] ?? 0;
}

const sameLayers = (a: boolean[], b: boolean[]): boolean => a.every((x, i) => x === b[i]);

function checkRope(arch: GgufExportArch, c: ModelConfig, dir: string): void {
  if (c.ropeScaling && arch !== 'llama') throw unsupported(dir, `llama3 RoPE scaling on ${c.architecture}`);
  if (c.longRope && arch !== 'phi3') throw unsupported(dir, `LongRoPE on ${c.architecture}`);
  if (c.ropeLinearFactor !== null && (arch === 'gemma2' || arch === 'phi3')) throw unsupported(dir, `linear RoPE scaling on ${c.architecture}`);
  if (c.rotaryDim !== c.headDim && arch !== 'phi3') throw unsupported(dir, `partial rotary on ${c.architecture}`);
}

/** The `{arch}.*` keys of `c` exported as `arch`; `dir` names the checkpoint in errors. */
export function archMetadata(arch: GgufExportArch, c: ModelConfig, dir: string): Record<string, GgufMeta> {
  checkRope(arch, c, dir);
  const m: Record<string, GgufMeta> = {};
  const put = (key: string, v: GgufMeta): void => void (m[`${arch}.${key}`] = v);
  const sizes = (): void => {
    put('block_count', meta.u32(c.numLayers));
    put('context_length', meta.u32(c.maxPositionEmbeddings));
    put('embedding_length', meta.u32(c.hiddenSize));
    put('feed_forward_length', meta.u32(c.intermediateSize));
    put('attention.head_count', meta.u32(c.numHeads));
    put('attention.head_count_kv', meta.u32(c.numKvHeads));
  };
  const headDims = (): void => {
    put('attention.key_length', meta.u32(c.headDim));
    put('attention.value_length', meta.u32(c.headDim));
  };
  const eps = (): void => put('attention.layer_norm_rms_epsilon', meta.f32(c.rmsNormEps));
  const sliding = c.layerWindows.map((w) => w > 0);
  const window = windowWidth(c, dir);
  const pattern = (): void => put('attention.sliding_window_pattern', meta.array(GgufType.BOOL, sliding));

  if (arch === 'phi3') { // Phi3MiniModel.set_gguf_parameters (no TextModel keys)
    sizes();
    put('rope.scaling.original_context_length', meta.u32(c.longRope?.originalMaxPositionEmbeddings ?? c.maxPositionEmbeddings));
    eps();
    put('rope.dimension_count', meta.u32(c.rotaryDim));
    put('rope.freq_base', meta.f32(c.ropeTheta));
    put('attention.sliding_window', meta.u32(window)); // 0: none (llama.cpp disables Phi-3 windows anyway)
    if (c.longRope) put('rope.scaling.attn_factor', meta.f32(c.longRope.attentionFactor));
    return m;
  }
  if (arch === 'gemma2') { // Gemma2Model.set_gguf_parameters (no TextModel keys)
    if (c.attnLogitSoftcap === null || c.finalLogitSoftcap === null) throw unsupported(dir, 'Gemma 2 without soft-capping (llama.cpp always caps)');
    sizes();
    eps();
    headDims();
    put('attn_logit_softcapping', meta.f32(c.attnLogitSoftcap));
    put('final_logit_softcapping', meta.f32(c.finalLogitSoftcap));
    put('attention.sliding_window', meta.u32(window));
    if (c.ropeTheta !== 10000) put('rope.freq_base', meta.f32(c.ropeTheta));
    if (!sameLayers(sliding, swaLayersOfPattern(GEMMA_DEFAULT_SWA_PATTERN.gemma2, c.numLayers))) pattern();
    return m;
  }

  // TextModel.set_gguf_parameters, then the architecture's additions
  sizes();
  if (c.ropeLinearFactor !== null) {
    put('rope.scaling.type', meta.str('linear'));
    put('rope.scaling.factor', meta.f32(c.ropeLinearFactor));
  }
  put('rope.freq_base', meta.f32(c.ropeTheta));
  if (c.ropeLocalTheta !== null) put('rope.freq_base_swa', meta.f32(c.ropeLocalTheta));
  eps();
  if (arch !== 'qwen2' || c.headDim * c.numHeads !== c.hiddenSize) headDims(); // Qwen2Config has no head_dim
  if (arch === 'llama') {
    put('vocab_size', meta.u32(c.vocabSize));
    put('rope.dimension_count', meta.u32(c.headDim));
    if (window > 0) {
      if (!sliding.every(Boolean)) throw unsupported(dir, 'a sliding window on some layers only of a llama-arch model');
      put('attention.sliding_window', meta.u32(window));
    }
  } else if (arch === 'gemma3') {
    if (c.finalLogitSoftcap !== null) put('final_logit_softcapping', meta.f32(c.finalLogitSoftcap));
    if (window > 0) {
      put('attention.sliding_window', meta.u32(window));
      if (!sameLayers(sliding, swaLayersOfPattern(GEMMA_DEFAULT_SWA_PATTERN.gemma3, c.numLayers))) pattern();
    }
  } else if (window > 0) { // qwen2, qwen3
    put('attention.sliding_window', meta.u32(window));
    pattern();
  }
  return m;
}
