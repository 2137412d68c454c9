#include <algorithm>
#include <mutex>
#include <cfloat>

#include "common.cuh"
#include "kernels.h"

namespace weft::cuda {
namespace {

constexpr unsigned kFull = 0xffffffffu;
constexpr int kAttentionThreads = 128;

__device__ __forceinline__ float warpSum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFull, v, o);
  return v;
}
__device__ __forceinline__ float warpMax(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(kFull, v, o));
  return v;
}

// Fixed-order block sum (same result for the same inputs and block size). `red` holds 32 floats.
__device__ float blockSum(float v, float* red) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
  v = warpSum(v);
  __syncthreads();
  if (lane == 0) red[warp] = v;
  __syncthreads();
  float t = lane < nw ? red[lane] : 0.f;
  t = warpSum(t);
  return t;  // every warp computes the same total
}

__global__ void ropeTableKernel(const int* pos, const float* invFreq, float* cosv, float* sinv, int T, int half) {
  gridDepLaunchDependents();
  gridDepWait();
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= T * half) return;
  const int t = i / half, j = i % half;
  const double a = double(pos[t]) * double(invFreq[j]);
  cosv[i] = float(cos(a));
  sinv[i] = float(sin(a));
}

template <typename W>
__global__ void embedKernel(const int* tok, const W* table, float* x, int H) {
  gridDepLaunchDependents();
  gridDepWait();
  const int t = blockIdx.x;
  const W* row = table + int64_t(tok[t]) * H;
  for (int i = threadIdx.x; i < H; i += blockDim.x) x[int64_t(t) * H + i] = toF(row[i]);
}

// One block per row; a row of up to 4 float4 per thread stays in registers between the two passes.
template <typename W>
__global__ void __launch_bounds__(512) rmsnormKernel(const float* __restrict__ x, const int* __restrict__ rows, const float* __restrict__ w,
                                                     W* __restrict__ out, int H, float eps) {
  __shared__ float red[32];
  gridDepLaunchDependents();
  gridDepWait();
  const int r = blockIdx.x;
  const float* xr = x + int64_t(rows ? rows[r] : r) * H;
  W* o = out + int64_t(r) * H;
  const int n4 = H / 4;
  if (H % 4 == 0 && n4 <= 4 * int(blockDim.x)) {
    float4 v[4];
    float ss = 0.f;
#pragma unroll
    for (int c = 0; c < 4; c++) {
      const int i = threadIdx.x + c * blockDim.x;
      v[c] = i < n4 ? reinterpret_cast<const float4*>(xr)[i] : make_float4(0.f, 0.f, 0.f, 0.f);
      ss += v[c].x * v[c].x + v[c].y * v[c].y + v[c].z * v[c].z + v[c].w * v[c].w;
    }
    ss = blockSum(ss, red);
    const float inv = rsqrtf(ss / float(H) + eps);
#pragma unroll
    for (int c = 0; c < 4; c++) {
      const int i = threadIdx.x + c * blockDim.x;
      if (i >= n4) continue;
      const float4 g = reinterpret_cast<const float4*>(w)[i];
      o[4 * i] = fromF<W>(v[c].x * inv * g.x);
      o[4 * i + 1] = fromF<W>(v[c].y * inv * g.y);
      o[4 * i + 2] = fromF<W>(v[c].z * inv * g.z);
      o[4 * i + 3] = fromF<W>(v[c].w * inv * g.w);
    }
    return;
  }
  float ss = 0;
  for (int i = threadIdx.x; i < H; i += blockDim.x) ss += xr[i] * xr[i];
  ss = blockSum(ss, red);
  const float inv = rsqrtf(ss / float(H) + eps);
  for (int i = threadIdx.x; i < H; i += blockDim.x) o[i] = fromF<W>(xr[i] * inv * w[i]);
}

template <typename KV>
__global__ void ropeStoreKernel(float* __restrict__ qkv, const float* __restrict__ bias, const float* __restrict__ cosv,
                                const float* __restrict__ sinv, StepIndex ix,
                                KvLayout kv, int layer, int numHeads) {
  gridDepLaunchDependents();
  gridDepWait();
  const int t = blockIdx.x, D = kv.headDim, half = D / 2, nkv = kv.kvHeads;
  const int qDim = numHeads * D, kvDim = nkv * D, dim = qDim + 2 * kvDim;
  float* row = qkv + int64_t(t) * dim;
  const float* c = cosv + int64_t(t) * half;
  const float* sn = sinv + int64_t(t) * half;
  const int p = ix.pos[t];
  const int page = ix.pageIdx[ix.tokPages[t] + p / kv.pageTokens], slot = p % kv.pageTokens;
  uint8_t* pageBase = kv.base + uint64_t(page) * kv.pageBytes;
  // q and k: one thread per rotation pair (head, i)
  for (int w = threadIdx.x; w < (numHeads + nkv) * half; w += blockDim.x) {
    const int h = w / half, i = w % half;
    const int off = h * D;  // q heads first, then k heads (contiguous in the row)
    float a = row[off + i], b = row[off + i + half];
    if (bias) { a += bias[off + i]; b += bias[off + i + half]; }
    const float ra = a * c[i] - b * sn[i], rb = b * c[i] + a * sn[i];
    if (h < numHeads) {
      row[off + i] = ra;
      row[off + i + half] = rb;
    } else {
      const int g = h - numHeads;
      KV* dst = reinterpret_cast<KV*>(pageBase + (uint64_t(layer) * 2 * nkv + g) * kv.blockBytes) + slot * D;
      dst[i] = fromF<KV>(ra);
      dst[i + half] = fromF<KV>(rb);
    }
  }
  for (int w = threadIdx.x; w < kvDim; w += blockDim.x) {
    const int g = w / D, d = w % D;
    float v = row[qDim + kvDim + w];
    if (bias) v += bias[qDim + kvDim + w];
    KV* dst = reinterpret_cast<KV*>(pageBase + ((uint64_t(layer) * 2 + 1) * nkv + g) * kv.blockBytes) + slot * D;
    dst[d] = fromF<KV>(v);
  }
}

// One block per (tile, kv head, split): the tile's query rows (tokens x grouped heads) stream over
// the sequence's keys in chunks of 32 positions held in shared memory, with an online softmax per
// row. A single-token tile (a decode token) is split over gridDim.z blocks, each taking a range of
// chunks and leaving (max, sum, accumulator) partials that attentionCombine merges in a fixed order
// (flash-decoding); longer tiles run whole in split 0. Chunk boundaries are multiples of 32 from
// position 0 and a split's range depends only on the sequence's own length, so a row's arithmetic
// never depends on which tile, batch or step it is in.
template <typename KV, typename W>
__device__ void attendTile(const float* qkv, int qkvDim, const KvLayout& kv, int layer, const StepIndex& ix, int numHeads,
                           int tileTokens, W* out, float* partial, bool splitOnly, int tile) {
  extern __shared__ float sm[];
  constexpr int VEC = 16 / sizeof(KV);  // elements per 16-byte load
  const int D = kv.headDim, nkv = kv.kvHeads, group = numHeads / nkv;
  const int g = blockIdx.y, split = blockIdx.z, numSplits = gridDim.z;
  const int t0 = ix.tileTok0[tile], nt = ix.tileCount[tile];
  const int slot = ix.tileSlot[tile];
  const bool splitting = slot >= 0;
  if (!splitting && (split > 0 || splitOnly)) return;
  const int rows = nt * group, maxRows = tileTokens * group;
  const int lastPos = ix.pos[t0 + nt - 1];
  int lo = 0, hi = lastPos + 1;
  if (splitting) {
    const int len = ((hi + numSplits - 1) / numSplits + 31) / 32 * 32;
    lo = min(hi, split * len);
    hi = min(hi, lo + len);
  }
  float* sq = sm;                    // (rows, D) queries, pre-scaled
  float* sacc = sq + maxRows * D;    // (rows, D) output accumulators
  float* sM = sacc + maxRows * D;    // (rows) running max
  float* sL = sM + maxRows;          // (rows) running sum
  float* sk = sL + maxRows;          // (32, D + 1) keys of the chunk
  float* sv = sk + 32 * (D + 1);     // (32, D) values of the chunk
  float* sP = sv + 32 * D;           // (warps, 32) probabilities of the chunk per row in flight
  const float scale = rsqrtf(float(D));
  for (int i = threadIdx.x; i < rows * D; i += blockDim.x) {
    const int r = i / D, d = i % D;
    const int t = t0 + r / group, h = g * group + r % group;
    sq[i] = qkv[int64_t(t) * qkvDim + h * D + d] * scale;
    sacc[i] = 0.f;
  }
  for (int r = threadIdx.x; r < rows; r += blockDim.x) {
    sM[r] = -INFINITY;
    sL[r] = 0.f;
  }
  const int* pages = ix.pageIdx + ix.tokPages[t0];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  const int vecPerRow = D / VEC;
  const uint64_t kOff = (uint64_t(layer) * 2 * nkv + g) * kv.blockBytes, vOff = kOff + uint64_t(nkv) * kv.blockBytes;
  for (int c0 = lo; c0 < hi; c0 += 32) {
    __syncthreads();
    // 16-byte loads, all issued before any is used
    for (int i = threadIdx.x; i < 32 * vecPerRow; i += blockDim.x) {
      const int j = i / vecPerRow, dv = (i % vecPerRow) * VEC, p = c0 + j;
      uint4 kraw = make_uint4(0, 0, 0, 0), vraw = make_uint4(0, 0, 0, 0);
      if (p < hi) {
        const uint8_t* page = kv.base + uint64_t(pages[p / kv.pageTokens]) * kv.pageBytes;
        const uint64_t e = (uint64_t(p % kv.pageTokens) * D + dv) * sizeof(KV);
        kraw = *reinterpret_cast<const uint4*>(page + kOff + e);
        vraw = *reinterpret_cast<const uint4*>(page + vOff + e);
      }
      const KV* kk = reinterpret_cast<const KV*>(&kraw);
      const KV* vv = reinterpret_cast<const KV*>(&vraw);
#pragma unroll
      for (int u = 0; u < VEC; u++) {
        sk[j * (D + 1) + dv + u] = toF(kk[u]);
        sv[j * D + dv + u] = toF(vv[u]);
      }
    }
    __syncthreads();
    for (int r = warp; r < rows; r += nwarps) {
      const int myPos = ix.pos[t0 + r / group];
      if (c0 > myPos) continue;
      const int p = c0 + lane;
      float s = -INFINITY;
      if (p <= myPos && p < hi) {
        s = 0.f;
        const float* q = sq + r * D;
        const float* k = sk + lane * (D + 1);
        for (int d = 0; d < D; d++) s += q[d] * k[d];
      }
      const float mOld = sM[r];
      const float mNew = fmaxf(mOld, warpMax(s));
      const float pj = s == -INFINITY ? 0.f : __expf(s - mNew);
      const float alpha = __expf(mOld - mNew);
      const float psum = warpSum(pj);
      float* sp = sP + warp * 32;  // this warp's probabilities, read by every lane below
      sp[lane] = pj;
      __syncwarp();
      for (int d = lane; d < D; d += 32) {
        float a = sacc[r * D + d] * alpha;
        for (int j = 0; j < 32; j++) a += sp[j] * sv[j * D + d];
        sacc[r * D + d] = a;
      }
      __syncwarp();
      if (lane == 0) {
        sM[r] = mNew;
        sL[r] = sL[r] * alpha + psum;
      }
      __syncwarp();
    }
  }
  __syncthreads();
  const int qDim = numHeads * D;
  if (splitting) {  // partial (max, sum, acc[D]) per (slot, head, split); an empty range leaves sum 0
    for (int i = threadIdx.x; i < rows * (D + 2); i += blockDim.x) {
      const int r = i / (D + 2), d = i % (D + 2);
      const int h = g * group + r;
      float* dst = partial + ((int64_t(slot) * numHeads + h) * numSplits + split) * (D + 2);
      dst[d] = d == 0 ? sM[r] : d == 1 ? sL[r] : sacc[r * D + d - 2];
    }
    return;
  }
  for (int i = threadIdx.x; i < rows * D; i += blockDim.x) {
    const int r = i / D, d = i % D;
    const int t = t0 + r / group, h = g * group + r % group;
    out[int64_t(t) * qDim + h * D + d] = fromF<W>(sacc[i] / sL[r]);
  }
}

// Blocks loop over tiles (gridDim.x may be smaller than numTiles: a prefill that shares the GPU
// with another context's decode keeps to part of the SMs).
template <typename KV, typename W>
__global__ void attentionKernel(const float* qkv, int qkvDim, KvLayout kv, int layer, StepIndex ix, int numHeads,
                                int tileTokens, W* out, float* partial, bool splitOnly, int numTiles) {
  gridDepLaunchDependents();
  gridDepWait();
  for (int tile = blockIdx.x; tile < numTiles; tile += gridDim.x) {
    attendTile<KV, W>(qkv, qkvDim, kv, layer, ix, numHeads, tileTokens, out, partial, splitOnly, tile);
    __syncthreads();
  }
}

// Merges the split partials of each single-token tile, splits in order: one block per (tile, head).
template <typename W>
__global__ void attentionCombineKernel(const float* partial, StepIndex ix, int numHeads, int D, int numSplits, W* out) {
  gridDepLaunchDependents();
  gridDepWait();
  const int slot = ix.tileSlot[blockIdx.x];
  if (slot < 0) return;
  const int h = blockIdx.y, t = ix.tileTok0[blockIdx.x];
  const float* p = partial + (int64_t(slot) * numHeads + h) * numSplits * (D + 2);
  float m = -INFINITY;
  for (int s = 0; s < numSplits; s++)
    if (p[s * (D + 2) + 1] > 0.f) m = fmaxf(m, p[s * (D + 2)]);
  float l = 0.f;
  for (int s = 0; s < numSplits; s++)
    if (p[s * (D + 2) + 1] > 0.f) l += p[s * (D + 2) + 1] * __expf(p[s * (D + 2)] - m);
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    float a = 0.f;
    for (int s = 0; s < numSplits; s++)
      if (p[s * (D + 2) + 1] > 0.f) a += p[s * (D + 2) + 2 + d] * __expf(p[s * (D + 2)] - m);
    out[int64_t(t) * numHeads * D + h * D + d] = fromF<W>(a / l);
  }
}

// Y[t, n] (f32) = sum_k X[t, k] W[n, k] (+ Y[t, n]) for a few tokens (decode): one warp per output
// row reads the row once with 16-byte loads (two batches of four in flight per lane) and keeps one
// sum per token; the reduction order is fixed, so a row's result does not depend on the other
// tokens. The first batch of weights is loaded before waiting for the previous kernel (PDL): the
// weights are constant, so their first bytes arrive while that kernel finishes.
// (Fusing the RMSNorm or SwiGLU into the X loads was tried: every warp then recomputes the inputs,
// which made the step slower, 1.8 vs 1.5 ms at 1 token and 2.6x slower at 8.)
constexpr int kGemvUnroll = 4;

// Weight formats of the GEMV: 16 bytes of a row hold 8 bf16/f16 (Plain) or 16 FP8 E4M3 (Fp8) elements.
template <typename W>
struct PlainRow {
  static constexpr int kPerVec = 8;
  __device__ static float scale(const float*, int) { return 1.f; }
  template <int T>
  __device__ static void fma(const uint4& wv, const W* __restrict__ x, int K, int i, float* acc) {
    const W* we = reinterpret_cast<const W*>(&wv);
#pragma unroll
    for (int t = 0; t < T; t++) {
      const uint4 xv = __ldg(reinterpret_cast<const uint4*>(x + int64_t(t) * K) + i);
      const W* xe = reinterpret_cast<const W*>(&xv);
#pragma unroll
      for (int e = 0; e < 8; e++) acc[t] += toF(we[e]) * toF(xe[e]);
    }
  }
};

template <typename W>
struct Fp8Row {
  static constexpr int kPerVec = 16;
  __device__ static float scale(const float* s, int n) { return s[n]; }
  template <int T>
  __device__ static void fma(const uint4& wv, const W* __restrict__ x, int K, int i, float* acc) {
    float wf[16];
    const __nv_fp8x2_storage_t* w2 = reinterpret_cast<const __nv_fp8x2_storage_t*>(&wv);
#pragma unroll
    for (int e = 0; e < 8; e++) {
      const __half2 h = __half2(__nv_cvt_fp8x2_to_halfraw2(w2[e], __NV_E4M3));
      const float2 f = __half22float2(h);
      wf[2 * e] = f.x;
      wf[2 * e + 1] = f.y;
    }
#pragma unroll
    for (int t = 0; t < T; t++) {
      const uint4* xr = reinterpret_cast<const uint4*>(x + int64_t(t) * K) + 2 * i;
      const uint4 xa = __ldg(xr), xb = __ldg(xr + 1);
      const W* ea = reinterpret_cast<const W*>(&xa);
      const W* eb = reinterpret_cast<const W*>(&xb);
#pragma unroll
      for (int e = 0; e < 8; e++) acc[t] += wf[e] * toF(ea[e]);
#pragma unroll
      for (int e = 0; e < 8; e++) acc[t] += wf[8 + e] * toF(eb[e]);
    }
  }
};

template <typename Row, typename W, int T>
__global__ void __launch_bounds__(256) gemvKernel(const uint4* __restrict__ w, const float* __restrict__ rowScale,
                                                  const W* __restrict__ x, float* __restrict__ y, int N, int K, bool accumulate) {
  gridDepLaunchDependents();
  const int lane = threadIdx.x & 31;
  const int n = blockIdx.x * 8 + (threadIdx.x >> 5);
  if (n >= N) return;  // a whole warp: its row does not exist
  const int kv = K / Row::kPerVec;  // 16-byte vectors per row
  const uint4* wr = w + int64_t(n) * kv;
  constexpr int U = kGemvUnroll;
  uint4 cur[U], nxt[U];
#pragma unroll
  for (int u = 0; u < U; u++) cur[u] = lane + 32 * u < kv ? __ldg(wr + lane + 32 * u) : make_uint4(0, 0, 0, 0);
  gridDepWait();  // x (and y, when accumulating) are the previous kernels'
  float acc[T];
#pragma unroll
  for (int t = 0; t < T; t++) acc[t] = 0.f;
  for (int base = 0; base < kv; base += 32 * U) {
    const int next = base + 32 * U;
#pragma unroll
    for (int u = 0; u < U; u++) nxt[u] = next + lane + 32 * u < kv ? __ldg(wr + next + lane + 32 * u) : make_uint4(0, 0, 0, 0);
#pragma unroll
    for (int u = 0; u < U; u++)
      if (base + lane + 32 * u < kv) Row::template fma<T>(cur[u], x, K, base + lane + 32 * u, acc);
#pragma unroll
    for (int u = 0; u < U; u++) cur[u] = nxt[u];
  }
  const float sc = Row::scale(rowScale, n);
#pragma unroll
  for (int t = 0; t < T; t++) {
    const float v = warpSum(acc[t]) * sc;
    if (lane == 0) y[int64_t(t) * N + n] = accumulate ? y[int64_t(t) * N + n] + v : v;
  }
}

template <typename Row, typename W>
void gemvT(const void* w, const float* scale, const W* x, float* y, int N, int T, int K, bool acc, cudaStream_t s) {
  const dim3 grid((N + 7) / 8);
  const uint4* wv = static_cast<const uint4*>(w);
  switch (T) {
    case 1: launch(gemvKernel<Row, W, 1>, grid, 256, 0, s, wv, scale, x, y, N, K, acc); break;
    case 2: launch(gemvKernel<Row, W, 2>, grid, 256, 0, s, wv, scale, x, y, N, K, acc); break;
    case 3: launch(gemvKernel<Row, W, 3>, grid, 256, 0, s, wv, scale, x, y, N, K, acc); break;
    case 4: launch(gemvKernel<Row, W, 4>, grid, 256, 0, s, wv, scale, x, y, N, K, acc); break;
    case 5: launch(gemvKernel<Row, W, 5>, grid, 256, 0, s, wv, scale, x, y, N, K, acc); break;
    case 6: launch(gemvKernel<Row, W, 6>, grid, 256, 0, s, wv, scale, x, y, N, K, acc); break;
    case 7: launch(gemvKernel<Row, W, 7>, grid, 256, 0, s, wv, scale, x, y, N, K, acc); break;
    default: launch(gemvKernel<Row, W, 8>, grid, 256, 0, s, wv, scale, x, y, N, K, acc); break;
  }
}

// FP8 rows to the activation dtype (the GEMMs of more than kGemvMaxTokens rows run on cuBLAS).
template <typename W>
__global__ void dequantFp8Kernel(const uint4* __restrict__ w, const float* __restrict__ scale, W* __restrict__ out, int64_t vecs, int vecsPerRow) {
  gridDepLaunchDependents();
  gridDepWait();  // out is the workspace an earlier GEMM read
  for (int64_t v = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; v < vecs; v += int64_t(gridDim.x) * blockDim.x) {
    const uint4 q = __ldg(w + v);
    const float sc = scale[v / vecsPerRow];
    const __nv_fp8x2_storage_t* q2 = reinterpret_cast<const __nv_fp8x2_storage_t*>(&q);
    W o[16];
#pragma unroll
    for (int e = 0; e < 8; e++) {
      const float2 f = __half22float2(__half2(__nv_cvt_fp8x2_to_halfraw2(q2[e], __NV_E4M3)));
      o[2 * e] = fromF<W>(f.x * sc);
      o[2 * e + 1] = fromF<W>(f.y * sc);
    }
    uint4* dst = reinterpret_cast<uint4*>(out) + 2 * v;
    dst[0] = *reinterpret_cast<const uint4*>(&o[0]);
    dst[1] = *reinterpret_cast<const uint4*>(&o[8]);
  }
}

// One block per row: scale = max |w| / 448 (1 for a zero row), w8 = E4M3(w / scale), saturating.
template <typename W>
__global__ void quantizeFp8Kernel(const W* __restrict__ w, uint8_t* __restrict__ w8, float* __restrict__ scale, int K) {
  __shared__ float red[32];
  const int64_t r = blockIdx.x;
  const W* row = w + r * K;
  float m = 0.f;
  for (int i = threadIdx.x; i < K; i += blockDim.x) m = fmaxf(m, fabsf(toF(row[i])));
  m = warpMax(m);
  __syncthreads();
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = m;
  __syncthreads();
  m = (threadIdx.x & 31) < int(blockDim.x >> 5) ? red[threadIdx.x & 31] : 0.f;
  m = warpMax(m);
  const float sc = m > 0.f && isfinite(m) ? m / 448.f : 1.f;
  if (threadIdx.x == 0) scale[r] = sc;
  for (int i = threadIdx.x; i < K; i += blockDim.x) w8[r * K + i] = __nv_cvt_float_to_fp8(toF(row[i]) / sc, __NV_SATFINITE, __NV_E4M3);
}

template <typename W>
__global__ void siluMulKernel(const float* gu, W* h, int F) {
  gridDepLaunchDependents();
  gridDepWait();
  const int t = blockIdx.y;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < F; i += gridDim.x * blockDim.x) {
    const float g = gu[int64_t(t) * 2 * F + i], u = gu[int64_t(t) * 2 * F + F + i];
    h[int64_t(t) * F + i] = fromF<W>(g / (1.f + __expf(-g)) * u);
  }
}

__device__ __forceinline__ unsigned long long globalTimerNs() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

// Fault injection (test:cuda): a kernel stuck until the host sets *flag (or limitNs passed), a
// kernel that traps (a sticky device fault), and a launch the runtime refuses.
__global__ void hangKernel(const volatile int* flag, unsigned long long limitNs) {
  const unsigned long long t0 = globalTimerNs();
  while (*flag == 0 && globalTimerNs() - t0 < limitNs) __nanosleep(100000);
}
__global__ void trapKernel() { __trap(); }
__global__ void noopKernel() {}

}  // namespace

void faultHang(const int* hostFlag, double limitSeconds, cudaStream_t s) {
  hangKernel<<<1, 1, 0, s>>>(hostFlag, (unsigned long long)(limitSeconds * 1e9));
}
void faultTrap(cudaStream_t s) { trapKernel<<<1, 1, 0, s>>>(); }
cudaError_t faultBadLaunch(cudaStream_t s) {
  noopKernel<<<1, 4096, 0, s>>>();  // more threads than a block may have
  return cudaGetLastError();
}

void ropeTable(const int* pos, const float* invFreq, float* cosv, float* sinv, int T, int half, cudaStream_t s) {
  const int n = T * half;
  launch(ropeTableKernel, dim3((n + 255) / 256), 256, 0, s, pos, invFreq, cosv, sinv, T, half);
}

void embed(const int* tok, const void* table, float* x, int T, int H, bool bf16, cudaStream_t s) {
  if (bf16) launch(embedKernel<__nv_bfloat16>, dim3(T), 256, 0, s, tok, static_cast<const __nv_bfloat16*>(table), x, H);
  else launch(embedKernel<__half>, dim3(T), 256, 0, s, tok, static_cast<const __half*>(table), x, H);
}

void rmsnorm(const float* x, const int* rows, const float* w, void* out, int R, int H, float eps, bool bf16, cudaStream_t s) {
  const int threads = H <= 2048 ? 128 : H <= 4096 ? 256 : 512;
  if (bf16) launch(rmsnormKernel<__nv_bfloat16>, dim3(R), threads, 0, s, x, rows, w, static_cast<__nv_bfloat16*>(out), H, eps);
  else launch(rmsnormKernel<__half>, dim3(R), threads, 0, s, x, rows, w, static_cast<__half*>(out), H, eps);
}

void ropeStoreKv(float* qkv, const float* bias, const float* cosv, const float* sinv, const StepIndex& ix,
                 const KvLayout& kv, int layer, int T, int numHeads, cudaStream_t s) {
  if (kv.f16) launch(ropeStoreKernel<__half>, dim3(T), 512, 0, s, qkv, bias, cosv, sinv, ix, kv, layer, numHeads);
  else launch(ropeStoreKernel<float>, dim3(T), 512, 0, s, qkv, bias, cosv, sinv, ix, kv, layer, numHeads);
}

size_t attentionSmem(int tileTokens, int group, int headDim) {
  const size_t rows = size_t(tileTokens) * group;
  return sizeof(float) * (2 * rows * headDim + 2 * rows + 32 * (headDim + 1) + 32 * headDim + 32 * (kAttentionThreads / 32));
}

void setAttentionSmemLimit(size_t bytes) {
  // a function attribute is process-wide: only ever raise it (engines with other shapes share it)
  static std::mutex mu;
  static size_t current = 0;
  std::lock_guard<std::mutex> lock(mu);
  if (bytes <= current) return;
  current = bytes;
  const int b = int(bytes);
  WEFT_CU(cudaFuncSetAttribute(attentionKernel<__half, __half>, cudaFuncAttributeMaxDynamicSharedMemorySize, b));
  WEFT_CU(cudaFuncSetAttribute(attentionKernel<__half, __nv_bfloat16>, cudaFuncAttributeMaxDynamicSharedMemorySize, b));
  WEFT_CU(cudaFuncSetAttribute(attentionKernel<float, __half>, cudaFuncAttributeMaxDynamicSharedMemorySize, b));
  WEFT_CU(cudaFuncSetAttribute(attentionKernel<float, __nv_bfloat16>, cudaFuncAttributeMaxDynamicSharedMemorySize, b));
}

void attention(const float* qkv, int qkvDim, const KvLayout& kv, int layer, const StepIndex& ix, int numTiles,
               int tileTokens, int numHeads, void* out, bool bf16, float* partial, bool anySplit, bool splitOnly, int maxBlocks,
               cudaStream_t s) {
  // maxBlocks > 0 caps the blocks (tiles x kv heads x splits), the tiles then taken in turn
  const int splits = anySplit ? kAttentionSplits : 1;
  int gx = numTiles;
  if (maxBlocks > 0) gx = std::max(1, std::min(numTiles, maxBlocks / (kv.kvHeads * splits)));
  const dim3 grid(gx, kv.kvHeads, splits);
  const size_t smem = attentionSmem(tileTokens, numHeads / kv.kvHeads, kv.headDim);
  const int threads = kAttentionThreads;
  if (kv.f16) {
    if (bf16) launch(attentionKernel<__half, __nv_bfloat16>, grid, threads, smem, s, qkv, qkvDim, kv, layer, ix, numHeads, tileTokens, static_cast<__nv_bfloat16*>(out), partial, splitOnly, numTiles);
    else launch(attentionKernel<__half, __half>, grid, threads, smem, s, qkv, qkvDim, kv, layer, ix, numHeads, tileTokens, static_cast<__half*>(out), partial, splitOnly, numTiles);
  } else {
    if (bf16) launch(attentionKernel<float, __nv_bfloat16>, grid, threads, smem, s, qkv, qkvDim, kv, layer, ix, numHeads, tileTokens, static_cast<__nv_bfloat16*>(out), partial, splitOnly, numTiles);
    else launch(attentionKernel<float, __half>, grid, threads, smem, s, qkv, qkvDim, kv, layer, ix, numHeads, tileTokens, static_cast<__half*>(out), partial, splitOnly, numTiles);
  }
  if (!anySplit) return;
  const dim3 cgrid(numTiles, numHeads);
  if (bf16) launch(attentionCombineKernel<__nv_bfloat16>, cgrid, 64, 0, s, partial, ix, numHeads, kv.headDim, kAttentionSplits, static_cast<__nv_bfloat16*>(out));
  else launch(attentionCombineKernel<__half>, cgrid, 64, 0, s, partial, ix, numHeads, kv.headDim, kAttentionSplits, static_cast<__half*>(out));
}

void gemv(const void* w, const void* x, float* y, int N, int T, int K, bool accumulate, bool bf16, cudaStream_t s) {
  if (bf16) gemvT<PlainRow<__nv_bfloat16>>(w, nullptr, static_cast<const __nv_bfloat16*>(x), y, N, T, K, accumulate, s);
  else gemvT<PlainRow<__half>>(w, nullptr, static_cast<const __half*>(x), y, N, T, K, accumulate, s);
}

void gemvFp8(const uint8_t* w, const float* scale, const void* x, float* y, int N, int T, int K, bool accumulate, bool bf16, cudaStream_t s) {
  if (bf16) gemvT<Fp8Row<__nv_bfloat16>>(w, scale, static_cast<const __nv_bfloat16*>(x), y, N, T, K, accumulate, s);
  else gemvT<Fp8Row<__half>>(w, scale, static_cast<const __half*>(x), y, N, T, K, accumulate, s);
}

void dequantFp8(const uint8_t* w, const float* scale, void* out, int64_t N, int K, bool bf16, cudaStream_t s) {
  const int64_t vecs = N * K / 16;
  const int blocks = int(std::min<int64_t>((vecs + 255) / 256, 132 * 16));
  const uint4* wv = reinterpret_cast<const uint4*>(w);
  if (bf16) launch(dequantFp8Kernel<__nv_bfloat16>, dim3(blocks), 256, 0, s, wv, scale, static_cast<__nv_bfloat16*>(out), vecs, K / 16);
  else launch(dequantFp8Kernel<__half>, dim3(blocks), 256, 0, s, wv, scale, static_cast<__half*>(out), vecs, K / 16);
}

void quantizeFp8(const void* w, uint8_t* w8, float* scale, int64_t N, int K, bool bf16, cudaStream_t s) {
  if (N == 0) return;
  if (bf16) quantizeFp8Kernel<<<unsigned(N), 256, 0, s>>>(static_cast<const __nv_bfloat16*>(w), w8, scale, K);
  else quantizeFp8Kernel<<<unsigned(N), 256, 0, s>>>(static_cast<const __half*>(w), w8, scale, K);
}

void siluMul(const float* gu, void* h, int T, int F, bool bf16, cudaStream_t s) {
  const dim3 grid((F + 255) / 256 < 64 ? (F + 255) / 256 : 64, T);
  if (bf16) launch(siluMulKernel<__nv_bfloat16>, grid, 256, 0, s, gu, static_cast<__nv_bfloat16*>(h), F);
  else launch(siluMulKernel<__half>, grid, 256, 0, s, gu, static_cast<__half*>(h), F);
}

}  // namespace weft::cuda
