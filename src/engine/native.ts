/**
 * The native addon's surface, mirrored in one TypeScript type (native/src/addon.cpp). Nothing
 * else in weft imports the .node file.
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { WeftError } from '../errors.js';
import type { TensorDType } from './safetensors.js';

export interface NativeTensorSpec {
  name: string;
  file: number;
  offset: number;
  nbytes: number;
  dtype: TensorDType;
  shape: number[];
  /**
   * F8_E4M3 weights [N, K]: their f32/bf16/f16 scales, a grid [ceil(N / block[0]), ceil(K / block[1])]
   * (per tensor: grid [1, 1], block [N, K]; per row: [N, 1], [1, K]); the weight is fp8 × scale.
   */
  scale?: { file: number; offset: number; nbytes: number; dtype: TensorDType; grid: [number, number]; block: [number, number] };
}

export interface NativeEngineSpec {
  config: {
    hiddenSize: number; numLayers: number; numHeads: number; numKvHeads: number; headDim: number;
    intermediateSize: number; vocabSize: number; maxPositionEmbeddings: number; rmsNormEps: number;
    ropeTheta: number; attentionBias: boolean; outputBias: boolean;
    ropeScaling:
      | null
      | { type: 'llama3'; factor: number; lowFreqFactor: number; highFreqFactor: number; originalMaxPositionEmbeddings: number }
      | { type: 'linear'; factor: number }
      | { type: 'longrope'; shortFactor: number[]; longFactor: number[]; originalMaxPositionEmbeddings: number; attentionFactor: number };
    /** dims rotated per head; RoPE pairs (2i, 2i+1) when ropeInterleaved; sliding layers' own base (0: none) */
    rotaryDim: number; ropeInterleaved: boolean; ropeLocalTheta: number;
    /** per layer: attend to the last N positions (0: all) */
    layerWindows: number[];
    qkNorm: boolean; activation: 'silu' | 'gelu_tanh'; normOffset: number; sandwichNorms: boolean; embedScale: boolean;
    /** attention scale = queryPreAttnScalar^-0.5; soft-caps 0: none */
    queryPreAttnScalar: number; attnLogitSoftcap: number; finalLogitSoftcap: number;
  };
  files: string[];
  tensors: NativeTensorSpec[];
  options: {
    contexts: number; threads: number; maxBatchTokens: number; maxBatchSequences: number; maxLogitRows: number;
    maxContext: number; kvMemoryBytes: number; kvPageTokens: number; kvDtype: 'F32' | 'F16';
    /** 'fp8': the layers' matrices as FP8 E4M3 on the GPU (cuda only). Default 'source'. */
    weightFormat?: 'source' | 'fp8';
    backend: 'cpu' | 'cuda'; cudaDevice: number;
    /** Kernel settings per kind of step (src/engine/tune.ts); absent: the backend's defaults. */
    tuning?: { decode1: Record<string, number>; batch: Record<string, number>; prefill: Record<string, number> };
  };
}

export interface NativeSampling {
  temperature: number; topK: number; topP: number; minP: number; repetitionPenalty: number;
  presencePenalty: number; frequencyPenalty: number; seed: number; stopTokens: number[]; logprobs: number;
}

/** logits: 0 none, 1 the last token's row, 2 every token's row. */
export interface NativeStepEntry { seq: number; tokens: Int32Array | number[]; logits: 0 | 1 | 2; sample: boolean }

export interface NativeStepResult {
  seq: number;
  token?: number;
  logprob?: number;
  stop?: boolean;
  top?: { token: number; logprob: number }[];
  logits?: Float32Array;
}

/** A step's results as arrays indexed like its entries; flags: 1 sampled, 2 a stop token. */
export interface NativePackedStepResults {
  seqs: Float64Array;
  tokens: Int32Array;
  logprobs: Float32Array;
  flags: Uint8Array;
}

export interface NativeSequenceInfo { id: number; numTokens: number; numPages: number; parked: boolean; busy: boolean }

export interface NativeStats {
  kvPagesTotal: number; kvPagesFree: number; kvPageTokens: number; kvBytesPerToken: number; kvDtype: 'F32' | 'F16';
  contexts: number; contextsBusy: number; threadsPerContext: number; maxContext: number; maxBatchTokens: number;
  maxBatchSequences: number; maxLogitRows: number; sequences: number; weightBytes: number;
  /** Bytes of weights in device memory (cuda; 0 on the CPU), weight format, and whether the GPU context was lost. */
  deviceWeightBytes: number; weightFormat: 'source' | 'fp8'; deviceLost: boolean;
  /** The contexts launch with programmatic dependent launch (cuda, WEFT_CUDA_PDL=1). */
  pdl: boolean;
  backend: 'cpu' | 'cuda'; device: string;
}

export interface NativeEngine {
  load(): Promise<void>;
  createSequence(): number;
  freeSequence(id: number): void;
  truncateSequence(id: number, numTokens: number): void;
  parkSequence(id: number): void;
  restoreSequence(id: number): void;
  sequenceInfo(id: number): NativeSequenceInfo;
  setSampling(id: number, params: NativeSampling): void;
  /** An object per sequence, or (when no logits or top log-probabilities were asked for) typed arrays. */
  step(context: number, entries: NativeStepEntry[]): Promise<NativeStepResult[] | NativePackedStepResults>;
  stats(): NativeStats;
  /** false while a step of this context that timed out on the device may still be running there. */
  contextReady(context: number): boolean;
  /** Test hooks (WEFT_FAULT_INJECTION=1, cuda): the context's next step meets the fault; releaseFault ends a hang. */
  injectFault(context: number, kind: 'launch' | 'oom' | 'hang' | 'trap'): void;
  releaseFault(context: number): void;
  dispose(): void;
}

export interface NativeAddon {
  NativeEngine: new (spec: NativeEngineSpec) => NativeEngine;
  measureBandwidth(bytes: number, threads: number): { readBytesPerS: number; bytes: number; threads: number };
  simd: 'avx512' | 'avx2' | 'scalar';
  /** The CPU backend's kernel settings worth timing on this machine (weft build's autotuning). */
  tuningCandidates(): Record<string, number>[];
  hardwareThreads: number;
  /** Whether this build has the CUDA backend. */
  cudaBuilt: boolean;
  /** Visible CUDA devices (0 without CUDA). */
  cudaDeviceCount(): number;
  /** Device-to-device copy bandwidth in bytes/s (read + write), for benchmarks. */
  cudaCopyBandwidth(bytes?: number, device?: number): number;
  /** Device memory free and total now, in bytes (every process's allocations counted). */
  cudaMemInfo(device?: number): { free: number; total: number };
  /** ggml block formats (native/src/addon_quant.cpp). */
  quant: NativeQuant;
}

/** A ggml tensor type name ('F32' | 'F16' | 'BF16' | 'Q8_0' | 'Q4_0' | 'Q4_K' | 'Q5_K' | 'Q6_K'). */
export type NativeQuantType = 'F32' | 'F16' | 'BF16' | 'Q8_0' | 'Q4_0' | 'Q4_K' | 'Q5_K' | 'Q6_K';

/**
 * ggml block (de)quantization and the quantized GEMM. Errors carry `code`: WEFT_UNSUPPORTED_DTYPE
 * for an unknown type, WEFT_BAD_ARGUMENT for a count off the block size or a buffer too small.
 */
export interface NativeQuant {
  /** Bytes of a row of `cols` values (cols a multiple of the type's block). */
  rowBytes(type: NativeQuantType, cols: number): number;
  /** The ggml encoding of `values` (length a multiple of the block); large inputs use every core. */
  quantize(type: NativeQuantType, values: Float32Array): Uint8Array;
  /** The first n values of `data`. */
  dequantize(type: NativeQuantType, data: Uint8Array, n: number): Float32Array;
  /**
   * Y[t, n] = sum_k x[t, k] w[n, k] for n in [n0, n1) (others 0): [T, rows]. Activations are
   * quantized per block as the engine does; `reference` runs the scalar dot products.
   */
  matmul(type: NativeQuantType, w: Uint8Array, rows: number, cols: number, x: Float32Array, T: number,
    reference: boolean, n0?: number, n1?: number): Float32Array;
  /** The SIMD path compiled in: 'avx512-vnni' | 'avx512bw' | 'avx-vnni' | 'avx2' | 'scalar'. */
  kernel: string;
}

let addon: NativeAddon | undefined;

/** Loads native/build/Release/weft_native.node (built by `npm install`). */
export function native(): NativeAddon {
  if (addon) return addon;
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 6; i++) {
    const candidate = join(dir, 'native', 'build', 'Release', 'weft_native.node');
    if (existsSync(candidate)) {
      addon = createRequire(import.meta.url)(candidate) as NativeAddon;
      return addon;
    }
    dir = dirname(dir);
  }
  throw new WeftError('WEFT_INTERNAL', 'the native addon is not built: run `npm install` (or `npm run build`)');
}
