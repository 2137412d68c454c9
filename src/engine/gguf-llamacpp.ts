/**
 * What llama.cpp derives from a GGUF file rather than reads from it: the rules its loaders apply
 * (src/models/<arch>.cpp, llama-hparams.cpp) where a key is missing or none exists. The exporter
 * (gguf-export.ts) writes files that these rules read back as the Hugging Face model; the mapping
 * (gguf-model.ts) reads files by them, so weft runs a GGUF file as llama.cpp does.
 */

/** The sliding-window pattern Gemma loaders assume without an `{arch}.attention.sliding_window_pattern` key. */
export const GEMMA_DEFAULT_SWA_PATTERN = { gemma2: 2, gemma3: 6 } as const;

/** llama.cpp's Gemma 2 defaults (hparams) for keys its converter always writes. */
export const GEMMA2_DEFAULTS = { slidingWindow: 4096, attnLogitSoftcap: 50, finalLogitSoftcap: 30 } as const;

/**
 * Which layers slide under a uint pattern (llama_hparams::set_swa_pattern): every layer but each
 * n-th (il % n == n - 1), as transformers' Gemma `(i + 1) % n != 0`; n = 0: every layer.
 */
export function swaLayersOfPattern(n: number, numLayers: number): boolean[] {
  return Array.from({ length: numLayers }, (_, il) => n === 0 || il % n < n - 1);
}

/**
 * The query_pre_attn_scalar llama.cpp's Gemma 2 / Gemma 3 use whatever the checkpoint said
 * (f_attention_scale): hidden / heads for the 27B models, recognized by their layer count (46,
 * 62), head_dim for the others. No key carries it.
 */
export function gemmaQueryPreAttnScalar(arch: 'gemma2' | 'gemma3', numLayers: number, hidden: number, heads: number, headDim: number): number {
  return numLayers === (arch === 'gemma2' ? 46 : 62) ? Math.floor(hidden / heads) : headDim;
}
