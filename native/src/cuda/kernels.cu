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
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= T * half) return;
  const int t = i / half, j = i % half;
  const double a = double(pos[t]) * double(invFreq[j]);
  cosv[i] = float(cos(a));
  sinv[i] = float(sin(a));
}

template <typename W>
__global__ void embedKernel(const int* tok, const W* table, float* x, int H) {
  const int t = blockIdx.x;
  const W* row = table + int64_t(tok[t]) * H;
  for (int i = threadIdx.x; i < H; i += blockDim.x) x[int64_t(t) * H + i] = toF(row[i]);
}

// One block per row; a row of up to 4 float4 per thread stays in registers between the two passes.
template <typename W>
__global__ void __launch_bounds__(512) rmsnormKernel(const float* __restrict__ x, const int* __restrict__ rows, const float* __restrict__ w,
                                                     W* __restrict__ out, int H, float eps) {
  __shared__ float red[32];
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
  for (int tile = blockIdx.x; tile < numTiles; tile += gridDim.x) {
    attendTile<KV, W>(qkv, qkvDim, kv, layer, ix, numHeads, tileTokens, out, partial, splitOnly, tile);
    __syncthreads();
  }
}

// Merges the split partials of each single-token tile, splits in order: one block per (tile, head).
template <typename W>
__global__ void attentionCombineKernel(const float* partial, StepIndex ix, int numHeads, int D, int numSplits, W* out) {
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
// row reads the row once with 16-byte loads (several in flight) and keeps one sum per token; the
// reduction order is fixed, so a row's result does not depend on the other tokens.
// (Fusing the RMSNorm or SwiGLU into the X loads was tried: every warp then recomputes the inputs,
// which made the step slower, 1.8 vs 1.5 ms at 1 token and 2.6x slower at 8.)
template <typename W, int T>
__global__ void __launch_bounds__(256) gemvKernel(const W* __restrict__ w, const W* __restrict__ x, float* __restrict__ y,
                                                  int N, int K, bool accumulate) {
  const int lane = threadIdx.x & 31;
  const int n = blockIdx.x * 8 + (threadIdx.x >> 5);
  if (n >= N) return;
  const uint4* wr = reinterpret_cast<const uint4*>(w + int64_t(n) * K);
  const int kv = K / 8;  // 16-byte vectors per row
  float acc[T];
#pragma unroll
  for (int t = 0; t < T; t++) acc[t] = 0.f;
  auto fma8 = [&](const uint4& wv, int i) {
    const W* we = reinterpret_cast<const W*>(&wv);
#pragma unroll
    for (int t = 0; t < T; t++) {
      const uint4 xv = __ldg(reinterpret_cast<const uint4*>(x + int64_t(t) * K) + i);
      const W* xe = reinterpret_cast<const W*>(&xv);
#pragma unroll
      for (int e = 0; e < 8; e++) acc[t] += toF(we[e]) * toF(xe[e]);
    }
  };
  constexpr int U = 4;
  int i = lane;
  for (; i + 32 * (U - 1) < kv; i += 32 * U) {
    uint4 wv[U];
#pragma unroll
    for (int u = 0; u < U; u++) wv[u] = __ldg(wr + i + 32 * u);
#pragma unroll
    for (int u = 0; u < U; u++) fma8(wv[u], i + 32 * u);
  }
  for (; i < kv; i += 32) fma8(__ldg(wr + i), i);
#pragma unroll
  for (int t = 0; t < T; t++) {
    const float v = warpSum(acc[t]);
    if (lane == 0) y[int64_t(t) * N + n] = accumulate ? y[int64_t(t) * N + n] + v : v;
  }
}

template <typename W>
void gemvT(const W* w, const W* x, float* y, int N, int T, int K, bool acc, cudaStream_t s) {
  const dim3 grid((N + 7) / 8);
  switch (T) {
    case 1: gemvKernel<W, 1><<<grid, 256, 0, s>>>(w, x, y, N, K, acc); break;
    case 2: gemvKernel<W, 2><<<grid, 256, 0, s>>>(w, x, y, N, K, acc); break;
    case 3: gemvKernel<W, 3><<<grid, 256, 0, s>>>(w, x, y, N, K, acc); break;
    case 4: gemvKernel<W, 4><<<grid, 256, 0, s>>>(w, x, y, N, K, acc); break;
    case 5: gemvKernel<W, 5><<<grid, 256, 0, s>>>(w, x, y, N, K, acc); break;
    case 6: gemvKernel<W, 6><<<grid, 256, 0, s>>>(w, x, y, N, K, acc); break;
    case 7: gemvKernel<W, 7><<<grid, 256, 0, s>>>(w, x, y, N, K, acc); break;
    default: gemvKernel<W, 8><<<grid, 256, 0, s>>>(w, x, y, N, K, acc); break;
  }
}

template <typename W>
__global__ void siluMulKernel(const float* gu, W* h, int F) {
  const int t = blockIdx.y;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < F; i += gridDim.x * blockDim.x) {
    const float g = gu[int64_t(t) * 2 * F + i], u = gu[int64_t(t) * 2 * F + F + i];
    h[int64_t(t) * F + i] = fromF<W>(g / (1.f + __expf(-g)) * u);
  }
}

}  // namespace

void ropeTable(const int* pos, const float* invFreq, float* cosv, float* sinv, int T, int half, cudaStream_t s) {
  const int n = T * half;
  ropeTableKernel<<<(n + 255) / 256, 256, 0, s>>>(pos, invFreq, cosv, sinv, T, half);
}

void embed(const int* tok, const void* table, float* x, int T, int H, bool bf16, cudaStream_t s) {
  if (bf16) embedKernel<<<T, 256, 0, s>>>(tok, static_cast<const __nv_bfloat16*>(table), x, H);
  else embedKernel<<<T, 256, 0, s>>>(tok, static_cast<const __half*>(table), x, H);
}

void rmsnorm(const float* x, const int* rows, const float* w, void* out, int R, int H, float eps, bool bf16, cudaStream_t s) {
  const int threads = H <= 2048 ? 128 : H <= 4096 ? 256 : 512;
  if (bf16) rmsnormKernel<<<R, threads, 0, s>>>(x, rows, w, static_cast<__nv_bfloat16*>(out), H, eps);
  else rmsnormKernel<<<R, threads, 0, s>>>(x, rows, w, static_cast<__half*>(out), H, eps);
}

void ropeStoreKv(float* qkv, const float* bias, const float* cosv, const float* sinv, const StepIndex& ix,
                 const KvLayout& kv, int layer, int T, int numHeads, cudaStream_t s) {
  if (kv.f16) ropeStoreKernel<__half><<<T, 512, 0, s>>>(qkv, bias, cosv, sinv, ix, kv, layer, numHeads);
  else ropeStoreKernel<float><<<T, 512, 0, s>>>(qkv, bias, cosv, sinv, ix, kv, layer, numHeads);
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
    if (bf16) attentionKernel<__half, __nv_bfloat16><<<grid, threads, smem, s>>>(qkv, qkvDim, kv, layer, ix, numHeads, tileTokens, static_cast<__nv_bfloat16*>(out), partial, splitOnly, numTiles);
    else attentionKernel<__half, __half><<<grid, threads, smem, s>>>(qkv, qkvDim, kv, layer, ix, numHeads, tileTokens, static_cast<__half*>(out), partial, splitOnly, numTiles);
  } else {
    if (bf16) attentionKernel<float, __nv_bfloat16><<<grid, threads, smem, s>>>(qkv, qkvDim, kv, layer, ix, numHeads, tileTokens, static_cast<__nv_bfloat16*>(out), partial, splitOnly, numTiles);
    else attentionKernel<float, __half><<<grid, threads, smem, s>>>(qkv, qkvDim, kv, layer, ix, numHeads, tileTokens, static_cast<__half*>(out), partial, splitOnly, numTiles);
  }
  if (!anySplit) return;
  const dim3 cgrid(numTiles, numHeads);
  if (bf16) attentionCombineKernel<<<cgrid, 64, 0, s>>>(partial, ix, numHeads, kv.headDim, kAttentionSplits, static_cast<__nv_bfloat16*>(out));
  else attentionCombineKernel<<<cgrid, 64, 0, s>>>(partial, ix, numHeads, kv.headDim, kAttentionSplits, static_cast<__half*>(out));
}

void gemv(const void* w, const void* x, float* y, int N, int T, int K, bool accumulate, bool bf16, cudaStream_t s) {
  if (bf16) gemvT(static_cast<const __nv_bfloat16*>(w), static_cast<const __nv_bfloat16*>(x), y, N, T, K, accumulate, s);
  else gemvT(static_cast<const __half*>(w), static_cast<const __half*>(x), y, N, T, K, accumulate, s);
}

void siluMul(const float* gu, void* h, int T, int F, bool bf16, cudaStream_t s) {
  const dim3 grid((F + 255) / 256 < 64 ? (F + 255) / 256 : 64, T);
  if (bf16) siluMulKernel<<<grid, 256, 0, s>>>(gu, static_cast<__nv_bfloat16*>(h), F);
  else siluMulKernel<<<grid, 256, 0, s>>>(gu, static_cast<__half*>(h), F);
}

}  // namespace weft::cuda
