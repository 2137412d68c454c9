// GPU sampling: one block per sampled row. Penalties, then greedy or temperature with top-k,
// top-p and min-p as thresholds on the logit order (found by bisection over order-preserving keys,
// every reduction in a fixed order), then a draw from a counter-based generator keyed by the
// sequence's seed and draw number: the same sequence and seed give the same tokens whatever the
// batch, context or step it runs in.
#include "common.cuh"
#include "kernels.h"

namespace weft::cuda {
namespace {

constexpr int kThreads = 1024;

__device__ __forceinline__ uint32_t orderKey(float x) {
  const uint32_t u = __float_as_uint(x);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__device__ __forceinline__ unsigned long long mix64(unsigned long long z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

struct Red {
  float f[32];
  double d[32];
  int i[32];
  float v[32];
  int idx[32];
};

// Fixed-order block sum (every thread gets the total); `slot` is one of red's 32-entry arrays.
template <typename T>
__device__ T blockSum(T v, T* slot) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  __syncthreads();
  if (lane == 0) slot[warp] = v;
  __syncthreads();
  T t = slot[lane];
  for (int o = 16; o > 0; o >>= 1) t += __shfl_xor_sync(0xffffffffu, t, o);
  return t;
}
__device__ double blockSumD(double v, Red& red) { return blockSum(v, red.d); }
__device__ int blockSumI(int v, Red& red) { return blockSum(v, red.i); }
// (max value, lowest index among equals)
__device__ void blockArgmax(float& v, int& idx, Red& red) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, v, o);
    const int oi = __shfl_xor_sync(0xffffffffu, idx, o);
    if (ov > v || (ov == v && oi < idx)) { v = ov; idx = oi; }
  }
  __syncthreads();
  if (lane == 0) { red.v[warp] = v; red.idx[warp] = idx; }
  __syncthreads();
  v = red.v[lane];
  idx = red.idx[lane];
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, v, o);
    const int oi = __shfl_xor_sync(0xffffffffu, idx, o);
    if (ov > v || (ov == v && oi < idx)) { v = ov; idx = oi; }
  }
}

__global__ void __launch_bounds__(kThreads) sampleKernel(float* logits, float* probs, int V, const SampleRow* rows,
                                                         const int2* penalties, float* penaltyOrig, int* out) {
  __shared__ Red red;
  __shared__ double partial[kThreads];
  __shared__ int chosenShared;
  __shared__ float rawChosen;
  const SampleRow row = rows[blockIdx.x];
  float* l = logits + int64_t(row.logitRow) * V;
  float* pr = probs + int64_t(blockIdx.x) * V;
  const int tid = threadIdx.x;

  // log-softmax normalizer of the raw distribution
  float mx = -INFINITY;
  int mi = 0x7fffffff;
  for (int i = tid; i < V; i += kThreads) if (l[i] > mx) { mx = l[i]; mi = i; }
  blockArgmax(mx, mi, red);
  if (mi >= V) {  // no logit compares greater than -inf (all NaN or -inf): report it, touch nothing
    if (tid == 0) {
      out[2 * blockIdx.x] = -1;
      out[2 * blockIdx.x + 1] = 0;
    }
    return;
  }
  const float rawMax = mx;
  double se = 0;
  for (int i = tid; i < V; i += kThreads) se += double(__expf(l[i] - rawMax));
  const double logNorm = double(rawMax) + log(blockSumD(se, red));

  // penalties (each token appears once in the list)
  for (int j = tid; j < row.penaltyCount; j += kThreads) {
    const int2 e = penalties[row.penaltyOffset + j];
    float v = l[e.x];
    penaltyOrig[row.penaltyOffset + j] = v;
    if ((e.y & 1) && row.repetition != 1.f) v = v > 0 ? v / row.repetition : v * row.repetition;
    const int count = e.y >> 1;
    if (count > 0) v -= row.presence + row.frequency * float(count);
    l[e.x] = v;
  }
  __syncthreads();

  int chosen;
  if (row.penaltyCount > 0) {  // the penalized maximum (else the raw one found above)
    const int rawArg = mi;
    mx = -INFINITY;
    mi = 0x7fffffff;
    for (int i = tid; i < V; i += kThreads) if (l[i] > mx) { mx = l[i]; mi = i; }
    blockArgmax(mx, mi, red);
    if (mi >= V) { mi = rawArg; mx = l[rawArg]; }
  }
  const float top = mx;
  if (row.temperature < 1e-6f || row.topK == 1) {  // (a tiny temperature is greedy: 1/T would overflow)
    chosen = mi;
  } else {
    const float invT = 1.f / row.temperature;
    for (int i = tid; i < V; i += kThreads) pr[i] = __expf((l[i] - top) * invT);
    __syncthreads();
    uint32_t thr = 0;  // keep logits whose key >= thr
    if (row.topK > 0 && row.topK < V) {
      // the largest key with at least topK logits at or above it
      uint32_t lo = 0, hi = orderKey(top);
      while (lo < hi) {
        const uint32_t mid = lo + (hi - lo + 1) / 2;
        int c = 0;
        for (int i = tid; i < V; i += kThreads) c += orderKey(l[i]) >= mid;
        if (blockSumI(c, red) >= row.topK) lo = mid; else hi = mid - 1;
      }
      thr = lo;
    }
    if (row.topP < 1.f) {
      double m = 0;
      for (int i = tid; i < V; i += kThreads) if (orderKey(l[i]) >= thr) m += pr[i];
      const double want = double(row.topP) * blockSumD(m, red);
      uint32_t lo = thr, hi = orderKey(top);
      while (lo < hi) {
        const uint32_t mid = lo + (hi - lo + 1) / 2;
        double s = 0;
        for (int i = tid; i < V; i += kThreads) if (orderKey(l[i]) >= mid) s += pr[i];
        if (blockSumD(s, red) >= want) lo = mid; else hi = mid - 1;
      }
      thr = lo;
    }
    if (row.minP > 0.f) {
      const uint32_t f = orderKey(top + __logf(row.minP) * row.temperature);
      if (f > thr) thr = f;
    }
    // inverse-CDF draw over the kept tokens in id order: each thread owns a contiguous id range
    const int per = (V + kThreads - 1) / kThreads, b = tid * per, e = min(V, b + per);
    double mine = 0;
    int lastKept = -1;
    for (int i = b; i < e; i++) if (orderKey(l[i]) >= thr) { mine += pr[i]; lastKept = i; }
    partial[tid] = mine;
    __syncthreads();
    if (tid == 0) {
      double total = 0;
      for (int t = 0; t < kThreads; t++) { const double p = partial[t]; partial[t] = total; total += p; }
      red.d[0] = total;
      chosenShared = -1;
    }
    __syncthreads();
    const double total = red.d[0];
    const unsigned long long bits = mix64(row.seed ^ mix64(row.draw));
    const double u = double(bits >> 11) * (1.0 / 9007199254740992.0) * total;
    if (u >= partial[tid] && u < partial[tid] + mine) {
      double c = partial[tid];
      int pick = lastKept;
      for (int i = b; i < e; i++) if (orderKey(l[i]) >= thr) { c += pr[i]; if (u < c) { pick = i; break; } }
      chosenShared = pick;
    }
    __syncthreads();
    if (chosenShared < 0) {  // u rounded past the end: the last kept token
      int last = lastKept;
      float lv = float(last);
      int li = last;
      blockArgmax(lv, li, red);
      if (tid == 0) chosenShared = li >= 0 ? li : mi;
      __syncthreads();
    }
    chosen = chosenShared;
  }
  // the sampled token's log-probability under the raw distribution
  if (tid == 0) rawChosen = l[chosen];
  __syncthreads();
  for (int j = tid; j < row.penaltyCount; j += kThreads)
    if (penalties[row.penaltyOffset + j].x == chosen) rawChosen = penaltyOrig[row.penaltyOffset + j];
  __syncthreads();
  if (tid == 0) {
    out[2 * blockIdx.x] = chosen;
    out[2 * blockIdx.x + 1] = __float_as_int(float(double(rawChosen) - logNorm));
  }
}

}  // namespace

void sample(float* logits, float* probs, int V, const SampleRow* rows, int numRows, const int2* penalties,
            float* penaltyOrig, int* out, cudaStream_t s) {
  if (numRows == 0) return;
  sampleKernel<<<numRows, kThreads, 0, s>>>(logits, probs, V, rows, penalties, penaltyOrig, out);
}

}  // namespace weft::cuda
