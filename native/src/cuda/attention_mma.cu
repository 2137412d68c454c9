// Prefill attention on tensor cores (FlashAttention-2 style, mma.sync m16n8k16 f16 -> f32): one
// block of 4 warps per (tile, KV head) takes the tile's 64 query rows (tokens x grouped heads, 16
// per warp) and streams the sequence's keys and values from the KV pages through shared memory 64
// positions at a time; scores, the online softmax and the P.V product stay in registers. Used for
// tiles of more than one token when the KV pages are f16 and the head dimension is 64 or 128;
// decode tokens keep the split kernel in kernels.cu.
#include "common.cuh"
#include "kernels.h"

namespace weft::cuda {
namespace {

constexpr int kRows = 64;     // query rows per block
constexpr int kKeys = 64;     // positions per chunk
constexpr int kThreads = 128;

__device__ __forceinline__ uint32_t pack(float lo, float hi) {
  const __half2 h = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&h);
}

__device__ __forceinline__ void mma(float* c, const uint32_t* a, uint32_t b0, uint32_t b1) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
               : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

template <int D, typename W>
__global__ void __launch_bounds__(kThreads) attentionMmaKernel(const float* __restrict__ qkv, int qkvDim, KvLayout kv, int layer,
                                                               StepIndex ix, int numHeads, W* __restrict__ out) {
  constexpr int LD = D + 8;  // halves per shared row (16-byte pad: conflict-free fragment loads)
  __shared__ __align__(16) __half sK[kKeys * LD];
  __shared__ __align__(16) __half sV[kKeys * LD];
  gridDepLaunchDependents();
  gridDepWait();
  const int tile = blockIdx.x, g = blockIdx.y;
  if (ix.tileSlot[tile] >= 0) return;  // a single-token tile: the split kernel's
  const int t0 = ix.tileTok0[tile], nt = ix.tileCount[tile];
  const int nkv = kv.kvHeads, group = numHeads / nkv, rows = nt * group;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, gi = lane >> 2, ti = lane & 3;
  const int lastPos = ix.pos[t0 + nt - 1];
  const int* pages = ix.pageIdx + ix.tokPages[t0];
  const float scale = rsqrtf(float(D)) * 1.4426950408889634f;  // exp2 domain

  // this thread's two rows (gi and gi + 8 of the warp's 16), their positions and Q fragments
  int rowPos[2];
  uint32_t qa[D / 16][4];
#pragma unroll
  for (int h2 = 0; h2 < 2; h2++) {
    const int r = warp * 16 + gi + 8 * h2;
    rowPos[h2] = r < rows ? ix.pos[t0 + r / group] : -1;
  }
#pragma unroll
  for (int kq = 0; kq < D / 16; kq++) {
#pragma unroll
    for (int h2 = 0; h2 < 2; h2++) {
      const int r = warp * 16 + gi + 8 * h2;
      float v[4] = {0.f, 0.f, 0.f, 0.f};
      if (r < rows) {
        const float* q = qkv + int64_t(t0 + r / group) * qkvDim + (g * group + r % group) * D + kq * 16 + 2 * ti;
        v[0] = q[0] * scale; v[1] = q[1] * scale; v[2] = q[8] * scale; v[3] = q[9] * scale;
      }
      qa[kq][h2] = pack(v[0], v[1]);       // a0 / a1: columns 2t, 2t+1 of rows gi / gi+8
      qa[kq][2 + h2] = pack(v[2], v[3]);   // a2 / a3: columns 2t+8, 2t+9
    }
  }
  float o[D / 8][4];
#pragma unroll
  for (int j = 0; j < D / 8; j++) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
  const uint64_t kOff = (uint64_t(layer) * 2 * nkv + g) * kv.blockBytes, vOff = kOff + uint64_t(nkv) * kv.blockBytes;

  for (int c0 = 0; c0 <= lastPos; c0 += kKeys) {
    __syncthreads();
    for (int i = threadIdx.x; i < kKeys * (D / 8); i += kThreads) {
      const int j = i / (D / 8), dv = (i % (D / 8)) * 8, p = c0 + j;
      uint4 kr = make_uint4(0, 0, 0, 0), vr = make_uint4(0, 0, 0, 0);
      if (p <= lastPos) {
        const uint8_t* page = kv.base + uint64_t(pages[p / kv.pageTokens]) * kv.pageBytes;
        const uint64_t e = (uint64_t(p % kv.pageTokens) * D + dv) * 2;
        kr = *reinterpret_cast<const uint4*>(page + kOff + e);
        vr = *reinterpret_cast<const uint4*>(page + vOff + e);
      }
      *reinterpret_cast<uint4*>(&sK[j * LD + dv]) = kr;
      *reinterpret_cast<uint4*>(&sV[j * LD + dv]) = vr;
    }
    __syncthreads();
    // S = Q K^T: 16 rows x 64 positions per warp
    float s[kKeys / 8][4];
#pragma unroll
    for (int n = 0; n < kKeys / 8; n++) {
      s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
#pragma unroll
      for (int kq = 0; kq < D / 16; kq++) {
        const __half* kr = &sK[(n * 8 + gi) * LD + kq * 16 + 2 * ti];
        mma(s[n], qa[kq], *reinterpret_cast<const uint32_t*>(kr), *reinterpret_cast<const uint32_t*>(kr + 8));
      }
    }
    // causal mask, online softmax (a row's 64 scores are spread over the 4 threads of a quad)
    float alpha[2];
#pragma unroll
    for (int h2 = 0; h2 < 2; h2++) {
      float mx = -INFINITY;
#pragma unroll
      for (int n = 0; n < kKeys / 8; n++)
#pragma unroll
        for (int e = 0; e < 2; e++) {
          const int p = c0 + n * 8 + 2 * ti + e;
          float& v = s[n][2 * h2 + e];
          if (p > rowPos[h2]) v = -INFINITY;
          mx = fmaxf(mx, v);
        }
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float mNew = fmaxf(m[h2], mx);
      // rows without any key yet (padding rows, or all masked) keep everything at zero
      alpha[h2] = mNew == -INFINITY ? 1.f : exp2f(m[h2] - mNew);
      float sum = 0.f;
#pragma unroll
      for (int n = 0; n < kKeys / 8; n++)
#pragma unroll
        for (int e = 0; e < 2; e++) {
          float& v = s[n][2 * h2 + e];
          v = v == -INFINITY ? 0.f : exp2f(v - mNew);
          sum += v;
        }
      l[h2] = l[h2] * alpha[h2] + sum;
      m[h2] = mNew;
    }
#pragma unroll
    for (int j = 0; j < D / 8; j++) {
      o[j][0] *= alpha[0]; o[j][1] *= alpha[0];
      o[j][2] *= alpha[1]; o[j][3] *= alpha[1];
    }
    // O += P V: P's accumulator layout is the A fragment of the next product
#pragma unroll
    for (int kk = 0; kk < kKeys / 16; kk++) {
      uint32_t pa[4] = {pack(s[2 * kk][0], s[2 * kk][1]), pack(s[2 * kk][2], s[2 * kk][3]),
                        pack(s[2 * kk + 1][0], s[2 * kk + 1][1]), pack(s[2 * kk + 1][2], s[2 * kk + 1][3])};
      const int k0 = kk * 16 + 2 * ti;
#pragma unroll
      for (int j = 0; j < D / 8; j++) {
        const int d = j * 8 + gi;
        const __half2 b0 = __halves2half2(sV[k0 * LD + d], sV[(k0 + 1) * LD + d]);
        const __half2 b1 = __halves2half2(sV[(k0 + 8) * LD + d], sV[(k0 + 9) * LD + d]);
        mma(o[j], pa, *reinterpret_cast<const uint32_t*>(&b0), *reinterpret_cast<const uint32_t*>(&b1));
      }
    }
  }
  // the row sums are split over the quad: reduce, normalize, write
#pragma unroll
  for (int h2 = 0; h2 < 2; h2++) {
    l[h2] += __shfl_xor_sync(0xffffffffu, l[h2], 1);
    l[h2] += __shfl_xor_sync(0xffffffffu, l[h2], 2);
  }
  const int qDim = numHeads * D;
#pragma unroll
  for (int h2 = 0; h2 < 2; h2++) {
    const int r = warp * 16 + gi + 8 * h2;
    if (r >= rows) continue;
    const float inv = 1.f / l[h2];
    W* dst = out + int64_t(t0 + r / group) * qDim + (g * group + r % group) * D;
#pragma unroll
    for (int j = 0; j < D / 8; j++) {
      dst[j * 8 + 2 * ti] = fromF<W>(o[j][2 * h2] * inv);
      dst[j * 8 + 2 * ti + 1] = fromF<W>(o[j][2 * h2 + 1] * inv);
    }
  }
}

}  // namespace

bool attentionMmaSupported(const KvLayout& kv, int numHeads) {
  const int group = numHeads / kv.kvHeads;
  return kv.f16 && (kv.headDim == 64 || kv.headDim == 128) && group >= 1 && kRows % group == 0;
}

int attentionMmaTileTokens(int numHeads, int kvHeads) { return kRows / (numHeads / kvHeads); }

void attentionMma(const float* qkv, int qkvDim, const KvLayout& kv, int layer, const StepIndex& ix, int numTiles, int numHeads,
                  void* out, bool bf16, cudaStream_t s) {
  const dim3 grid(numTiles, kv.kvHeads);
  if (kv.headDim == 64) {
    if (bf16) launch(attentionMmaKernel<64, __nv_bfloat16>, grid, kThreads, 0, s, qkv, qkvDim, kv, layer, ix, numHeads, static_cast<__nv_bfloat16*>(out));
    else launch(attentionMmaKernel<64, __half>, grid, kThreads, 0, s, qkv, qkvDim, kv, layer, ix, numHeads, static_cast<__half*>(out));
  } else {
    if (bf16) launch(attentionMmaKernel<128, __nv_bfloat16>, grid, kThreads, 0, s, qkv, qkvDim, kv, layer, ix, numHeads, static_cast<__nv_bfloat16*>(out));
    else launch(attentionMmaKernel<128, __half>, grid, kThreads, 0, s, qkv, qkvDim, kv, layer, ix, numHeads, static_cast<__half*>(out));
  }
}

}  // namespace weft::cuda
