/**
 * A plain float64 reference forward pass for the tiny Llama / Mistral / Qwen2 models (llama2.c
 * style: one token at a time, explicit loops, a KV cache). It shares only the loaders with the
 * engine (config.ts, safetensors.ts, weights.ts, dtype.ts) and is meant to be read, not to be fast.
 *
 * Notation: H = hidden size, D = head dim, nH = heads, nKV = KV heads, F = FFN size, V = vocab.
 * Matrices are stored row-major as [out, in], as in Hugging Face checkpoints.
 */
import { loadModelConfig, type ModelConfig } from '../../src/engine/config.js';
import { readTensorF64 } from '../../src/engine/dtype.js';
import { readSafetensorsIndex, type TensorInfo } from '../../src/engine/safetensors.js';
import { resolveWeights } from '../../src/engine/weights.js';

export interface RefLayer {
  inputNorm: Float64Array; // [H]
  wq: Float64Array; // [nH*D, H]
  wk: Float64Array; // [nKV*D, H]
  wv: Float64Array; // [nKV*D, H]
  wo: Float64Array; // [H, nH*D]
  bq: Float64Array | null; // [nH*D]   (qwen2)
  bk: Float64Array | null; // [nKV*D]
  bv: Float64Array | null; // [nKV*D]
  postNorm: Float64Array; // [H]
  wGate: Float64Array; // [F, H]
  wUp: Float64Array; // [F, H]
  wDown: Float64Array; // [H, F]
}

export interface RefWeights {
  embed: Float64Array; // [V, H]
  layers: RefLayer[];
  norm: Float64Array; // [H]
  lmHead: Float64Array; // [V, H]  (the same array as embed when tied)
}

/** Per-layer keys and values of every position seen so far. */
export class KVCache {
  readonly k: Float64Array[]; // per layer [maxPos, nKV*D]
  readonly v: Float64Array[]; // per layer [maxPos, nKV*D]
  length = 0; // number of positions filled
  constructor(
    readonly numLayers: number,
    readonly maxPos: number,
    readonly kvDim: number,
  ) {
    this.k = Array.from({ length: numLayers }, () => new Float64Array(maxPos * kvDim));
    this.v = Array.from({ length: numLayers }, () => new Float64Array(maxPos * kvDim));
  }
}

export interface ReferenceOptions {
  /**
   * Emulate Hugging Face's float32 rotary tables (inv_freq, pos*inv_freq, cos/sin all rounded to
   * float32, as transformers does even for a float64 model). Default false: everything float64.
   */
  hfFloat32Rope?: boolean;
}

// ---- small helpers --------------------------------------------------------------------------

/** out[r] = sum_c W[r, c] * x[c]   (W: [rows, cols]) */
function matvec(out: Float64Array, W: Float64Array, x: Float64Array, rows: number, cols: number): void {
  for (let r = 0; r < rows; r++) {
    let s = 0;
    const base = r * cols;
    for (let c = 0; c < cols; c++) s += W[base + c] * x[c];
    out[r] = s;
  }
}

/** out = x / sqrt(mean(x^2) + eps) * w */
function rmsnorm(out: Float64Array, x: Float64Array, w: Float64Array, eps: number): void {
  let ss = 0;
  for (let i = 0; i < x.length; i++) ss += x[i] * x[i];
  const inv = 1 / Math.sqrt(ss / x.length + eps);
  for (let i = 0; i < x.length; i++) out[i] = x[i] * inv * w[i];
}

function silu(x: number): number {
  return x / (1 + Math.exp(-x));
}

/**
 * RoPE inverse frequencies, HF convention: inv_freq[i] = theta^(-2i/D), i < D/2, with the
 * Llama-3 rule when configured: wavelengths longer than orig/low_freq_factor are divided by
 * `factor`, shorter than orig/high_freq_factor are kept, and the band between is interpolated.
 */
export function ropeInvFreq(cfg: ModelConfig, f32 = false): Float64Array {
  const r = f32 ? Math.fround : (x: number) => x;
  const half = cfg.headDim / 2;
  const inv = new Float64Array(half);
  for (let i = 0; i < half; i++) inv[i] = r(1 / r(cfg.ropeTheta ** r((2 * i) / cfg.headDim)));
  const rs = cfg.ropeScaling;
  if (rs) {
    const lowFreqWavelen = rs.originalMaxPositionEmbeddings / rs.lowFreqFactor;
    const highFreqWavelen = rs.originalMaxPositionEmbeddings / rs.highFreqFactor;
    for (let i = 0; i < half; i++) {
      const wavelen = (2 * Math.PI) / inv[i];
      if (wavelen < highFreqWavelen) continue; // high frequency: unchanged
      if (wavelen > lowFreqWavelen) {
        inv[i] = r(inv[i] / rs.factor); // low frequency: scaled down
        continue;
      }
      // medium band: smooth interpolation between scaled and unscaled
      const smooth = (rs.originalMaxPositionEmbeddings / wavelen - rs.lowFreqFactor) / (rs.highFreqFactor - rs.lowFreqFactor);
      inv[i] = r((1 - smooth) * (inv[i] / rs.factor) + smooth * inv[i]);
    }
  }
  return inv;
}

/** Rotates each D-sized head in place at position `pos` (rotate_half: pairs (i, i + D/2)). */
function applyRope(x: Float64Array, nHeads: number, D: number, cos: Float64Array, sin: Float64Array): void {
  const half = D / 2;
  for (let h = 0; h < nHeads; h++) {
    const o = h * D;
    for (let i = 0; i < half; i++) {
      const a = x[o + i];
      const b = x[o + i + half];
      x[o + i] = a * cos[i] - b * sin[i];
      x[o + i + half] = b * cos[i] + a * sin[i];
    }
  }
}

async function load64(t: TensorInfo): Promise<Float64Array> {
  return readTensorF64(t);
}

// ---- the model ------------------------------------------------------------------------------

export class ReferenceModel {
  readonly invFreq: Float64Array; // [D/2]

  constructor(
    readonly config: ModelConfig,
    readonly w: RefWeights,
    readonly opts: ReferenceOptions = {},
  ) {
    this.invFreq = ropeInvFreq(config, !!opts.hfFloat32Rope);
  }

  /** Reads config.json and the safetensors weights of a model directory (all converted to float64). */
  static async load(dir: string, opts: ReferenceOptions = {}): Promise<ReferenceModel> {
    const config = await loadModelConfig(dir);
    const mw = resolveWeights(config, await readSafetensorsIndex(dir));
    const embed = await load64(mw.embed);
    const layers: RefLayer[] = [];
    for (const l of mw.layers) {
      layers.push({
        inputNorm: await load64(l.inputNorm),
        wq: await load64(l.q),
        wk: await load64(l.k),
        wv: await load64(l.v),
        wo: await load64(l.o),
        bq: l.qBias ? await load64(l.qBias) : null,
        bk: l.kBias ? await load64(l.kBias) : null,
        bv: l.vBias ? await load64(l.vBias) : null,
        postNorm: await load64(l.postNorm),
        wGate: await load64(l.gate),
        wUp: await load64(l.up),
        wDown: await load64(l.down),
      });
    }
    const norm = await load64(mw.norm);
    const lmHead = mw.lmHead === mw.embed ? embed : await load64(mw.lmHead);
    return new ReferenceModel(config, { embed, layers, norm, lmHead }, opts);
  }

  newCache(maxPos = this.config.maxPositionEmbeddings): KVCache {
    return new KVCache(this.config.numLayers, maxPos, this.config.numKvHeads * this.config.headDim);
  }

  /**
   * Runs `tokens` at positions startPos, startPos+1, ... and returns the logits [V] of each.
   * `cache` holds the earlier positions (a fresh one when omitted); startPos defaults to
   * cache.length, and a smaller startPos rewinds the cache to that length.
   */
  forward(tokens: number[], startPos?: number, cache?: KVCache): Float64Array[] {
    const kv = cache ?? this.newCache();
    const start = startPos ?? kv.length;
    if (!Number.isInteger(start) || start < 0 || start > kv.length) {
      throw new Error(`forward: startPos ${start} must be within [0, cache.length = ${kv.length}]`);
    }
    if (start + tokens.length > kv.maxPos) {
      throw new Error(`forward: ${start} + ${tokens.length} positions exceed the cache size ${kv.maxPos}`);
    }
    kv.length = start;
    const out: Float64Array[] = [];
    for (let i = 0; i < tokens.length; i++) {
      out.push(this.step(tokens[i], start + i, kv));
      kv.length = start + i + 1;
    }
    return out;
  }

  /** One token at position `pos`; its K/V go into the cache. Returns logits [V]. */
  private step(token: number, pos: number, kv: KVCache): Float64Array {
    const c = this.config;
    const H = c.hiddenSize;
    const D = c.headDim;
    const nH = c.numHeads;
    const nKV = c.numKvHeads;
    const qDim = nH * D;
    const kvDim = nKV * D;
    const F = c.intermediateSize;
    const group = nH / nKV; // query heads per KV head
    if (!Number.isInteger(token) || token < 0 || token >= c.vocabSize) throw new Error(`forward: token ${token} out of range`);

    // rotary tables for this position: angle_i = pos * inv_freq[i]
    const half = D / 2;
    const cos = new Float64Array(half);
    const sin = new Float64Array(half);
    for (let i = 0; i < half; i++) {
      if (this.opts.hfFloat32Rope) {
        const ang = Math.fround(pos * this.invFreq[i]);
        cos[i] = Math.fround(Math.cos(ang));
        sin[i] = Math.fround(Math.sin(ang));
      } else {
        const ang = pos * this.invFreq[i];
        cos[i] = Math.cos(ang);
        sin[i] = Math.sin(ang);
      }
    }

    // x = embedding row of the token   [H]
    const x = this.w.embed.slice(token * H, (token + 1) * H);
    const xb = new Float64Array(H); // normalized input   [H]
    const q = new Float64Array(qDim); // [nH*D]
    const k = new Float64Array(kvDim); // [nKV*D]
    const v = new Float64Array(kvDim); // [nKV*D]
    const att = new Float64Array(pos + 1); // scores over positions 0..pos
    const ao = new Float64Array(qDim); // attention output   [nH*D]
    const proj = new Float64Array(H); // [H]
    const g = new Float64Array(F); // gate   [F]
    const u = new Float64Array(F); // up     [F]
    const scale = 1 / Math.sqrt(D);

    for (let l = 0; l < c.numLayers; l++) {
      const L = this.w.layers[l];

      // --- attention block ---
      // xb = RMSNorm(x) * input_layernorm
      rmsnorm(xb, x, L.inputNorm, c.rmsNormEps);
      // q, k, v projections (+ biases for qwen2)
      matvec(q, L.wq, xb, qDim, H);
      matvec(k, L.wk, xb, kvDim, H);
      matvec(v, L.wv, xb, kvDim, H);
      if (L.bq) for (let i = 0; i < qDim; i++) q[i] += L.bq[i];
      if (L.bk) for (let i = 0; i < kvDim; i++) k[i] += L.bk[i];
      if (L.bv) for (let i = 0; i < kvDim; i++) v[i] += L.bv[i];
      // RoPE on q and k
      applyRope(q, nH, D, cos, sin);
      applyRope(k, nKV, D, cos, sin);
      // store k, v at this position
      kv.k[l].set(k, pos * kvDim);
      kv.v[l].set(v, pos * kvDim);
      // causal attention per query head; head h reads KV head floor(h / group)
      for (let h = 0; h < nH; h++) {
        const kvh = Math.floor(h / group);
        // scores_t = q_h . k_t / sqrt(D), t = 0..pos
        let max = -Infinity;
        for (let t = 0; t <= pos; t++) {
          let s = 0;
          const kb = t * kvDim + kvh * D;
          for (let d = 0; d < D; d++) s += q[h * D + d] * kv.k[l][kb + d];
          att[t] = s * scale;
          if (att[t] > max) max = att[t];
        }
        // softmax over t
        let sum = 0;
        for (let t = 0; t <= pos; t++) {
          att[t] = Math.exp(att[t] - max);
          sum += att[t];
        }
        // ao_h = sum_t softmax_t * v_t
        for (let d = 0; d < D; d++) {
          let s = 0;
          for (let t = 0; t <= pos; t++) s += att[t] * kv.v[l][t * kvDim + kvh * D + d];
          ao[h * D + d] = s / sum;
        }
      }
      // x += o_proj(ao)
      matvec(proj, L.wo, ao, H, qDim);
      for (let i = 0; i < H; i++) x[i] += proj[i];

      // --- MLP block (SwiGLU) ---
      // xb = RMSNorm(x) * post_attention_layernorm
      rmsnorm(xb, x, L.postNorm, c.rmsNormEps);
      // g = gate(xb), u = up(xb); g = silu(g) * u
      matvec(g, L.wGate, xb, F, H);
      matvec(u, L.wUp, xb, F, H);
      for (let i = 0; i < F; i++) g[i] = silu(g[i]) * u[i];
      // x += down(g)
      matvec(proj, L.wDown, g, H, F);
      for (let i = 0; i < H; i++) x[i] += proj[i];
    }

    // final norm, then logits = lm_head(x)   [V]
    rmsnorm(xb, x, this.w.norm, c.rmsNormEps);
    const logits = new Float64Array(c.vocabSize);
    matvec(logits, this.w.lmHead, xb, c.vocabSize, H);
    return logits;
  }

  /** Greedy decoding: feeds `prompt`, then appends `n` argmax tokens. Returns the new tokens. */
  greedy(prompt: number[], n: number): number[] {
    const cache = this.newCache();
    let logits = this.forward(prompt, 0, cache);
    const out: number[] = [];
    for (let i = 0; i < n; i++) {
      const last = logits[logits.length - 1];
      let best = 0;
      for (let j = 1; j < last.length; j++) if (last[j] > last[best]) best = j;
      out.push(best);
      if (i + 1 < n) logits = this.forward([best], undefined, cache);
    }
    return out;
  }
}
