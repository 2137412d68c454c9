#include "kernels.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "quant.h"
#include "simd.h"

namespace weft::cpu {
using namespace simd;

#if defined(__AVX512F__)
constexpr int kRowBlock = 6, kColBlock = 4;  // 24 accumulators of 32 zmm (6x4 measured best of 4x4, 8x3, 6x4)
#else
constexpr int kRowBlock = 4, kColBlock = 3;  // 12 accumulators of 16 ymm
#endif

static void convertRows(const void* src, DType dtype, int64_t count, float* dst) {
  int64_t i = 0;
  if (dtype == DType::F16) {
    const uint16_t* s = static_cast<const uint16_t*>(src);
#if WEFT_SIMD
    for (; i + VL <= count; i += VL) store(dst + i, loadF16(s + i));
#endif
    for (; i < count; i++) dst[i] = f16ToF32(s[i]);
  } else if (dtype == DType::BF16) {
    const uint16_t* s = static_cast<const uint16_t*>(src);
#if WEFT_SIMD
    for (; i + VL <= count; i += VL) store(dst + i, loadBF16(s + i));
#endif
    for (; i < count; i++) dst[i] = bf16ToF32(s[i]);
  } else {
    std::memcpy(dst, src, count * sizeof(float));
  }
}

// Weight element loads: f32 directly, f16/bf16 converted in registers (exact conversions, so a
// dot product gives the same bits whichever path computed it).
template <DType WT>
static inline vf loadW(const void* W, int64_t i) {
#if WEFT_SIMD
  if constexpr (WT == DType::F16) return loadF16(static_cast<const uint16_t*>(W) + i);
  else if constexpr (WT == DType::BF16) return loadBF16(static_cast<const uint16_t*>(W) + i);
  else return load(static_cast<const float*>(W) + i);
#else
  return loadScalar(W, WT, i);
#endif
}

// out[r * C + c] = dot(X row r, W row c) for an R x C block; one accumulator per output,
// k ascending, so the value is the same whatever block or path it is computed in.
template <int R, int C, DType WT>
static void microKernel(const float* X, int64_t ldx, const void* W, int64_t ldw, int64_t K, float* out) {
  vf acc[R][C];
  for (int r = 0; r < R; r++)
    for (int c = 0; c < C; c++) acc[r][c] = zero();
  int64_t k = 0;
  for (; k + VL <= K; k += VL) {
    vf w[C];
    for (int c = 0; c < C; c++) w[c] = loadW<WT>(W, c * ldw + k);
    for (int r = 0; r < R; r++) {
      vf x = load(X + r * ldx + k);
      for (int c = 0; c < C; c++) acc[r][c] = simd::fma(x, w[c], acc[r][c]);
    }
  }
  for (int r = 0; r < R; r++)
    for (int c = 0; c < C; c++) {
      float s = simd::sum(acc[r][c]);
      for (int64_t kk = k; kk < K; kk++) s = std::fma(X[r * ldx + kk], loadScalar(W, WT, c * ldw + kk), s);
      out[r * C + c] = s;
    }
}

using MicroFn = void (*)(const float*, int64_t, const void*, int64_t, int64_t, float*);

template <DType WT, int R, int... Cs>
static constexpr void fillRow(MicroFn* row, std::integer_sequence<int, Cs...>) {
  ((row[Cs] = &microKernel<R, Cs + 1, WT>), ...);
}
template <DType WT, int... Rs>
static constexpr void fillTable(MicroFn (*table)[kColBlock], std::integer_sequence<int, Rs...>) {
  ((fillRow<WT, Rs + 1>(table[Rs], std::make_integer_sequence<int, kColBlock>{})), ...);
}
struct MicroTable {
  MicroFn fn[3][kRowBlock][kColBlock];  // by weight dtype
  MicroTable() {
    fillTable<DType::F32>(fn[0], std::make_integer_sequence<int, kRowBlock>{});
    fillTable<DType::F16>(fn[1], std::make_integer_sequence<int, kRowBlock>{});
    fillTable<DType::BF16>(fn[2], std::make_integer_sequence<int, kRowBlock>{});
  }
};
static const MicroTable kMicro;

// Weights are read straight from the mapped checkpoint and converted in registers, for any number
// of rows: a block of kColBlock weight rows (a few KB) stays in L1 while every row block of X
// passes over it. (Converting panels of weights to f32 scratch first measured slower at every
// batch size.)
void gemm(const float* X, int64_t T, int64_t ldx, const WeightView& W, int64_t n0, int64_t n1,
          float* Y, int64_t ldy, const float* bias, bool accumulate, const KernelTuning& tuning) {
  if (isQuant(W.dtype)) return gemmQuant(X, T, ldx, W, n0, n1, Y, ldy, bias, accumulate, false, tuning);
  const int64_t K = W.cols;
  const size_t elt = dtypeSize(W.dtype);
  const auto& table = kMicro.fn[int(W.dtype)];
  // a single row (decode of one sequence) streams 8 weight rows at a time: more loads in flight
  const MicroFn wide = W.dtype == DType::F16 ? &microKernel<1, 8, DType::F16>
                       : W.dtype == DType::BF16 ? &microKernel<1, 8, DType::BF16>
                                                : &microKernel<1, 8, DType::F32>;
  float out[kRowBlock * kColBlock > 8 ? kRowBlock * kColBlock : 8];
  for (int64_t p = n0; p < n1; p += kPanelRows) {
    const int64_t pc = std::min<int64_t>(kPanelRows, n1 - p);
    const uint8_t* Wp = static_cast<const uint8_t*>(W.data) + p * K * elt;
    for (int64_t t = 0; t < T; t += kRowBlock) {
      const int r = int(std::min<int64_t>(kRowBlock, T - t));
      for (int64_t c0 = 0; c0 < pc;) {
        int c = int(std::min<int64_t>(kColBlock, pc - c0));
        if (r == 1 && pc - c0 >= 8) {
          c = 8;
          wide(X + t * ldx, ldx, Wp + c0 * K * elt, K, K, out);
        } else {
          table[r - 1][c - 1](X + t * ldx, ldx, Wp + c0 * K * elt, K, K, out);
        }
        for (int i = 0; i < r; i++) {
          float* y = Y + (t + i) * ldy + p + c0;
          for (int j = 0; j < c; j++) {
            float v = out[i * c + j];
            if (bias) v += bias[p + c0 + j];
            y[j] = accumulate ? y[j] + v : v;
          }
        }
        c0 += c;
      }
    }
  }
}

void rmsnorm(const float* x, const float* w, float eps, int64_t n, float* out) {
  vf acc = zero();
  int64_t i = 0;
  for (; i + VL <= n; i += VL) {
    vf v = load(x + i);
    acc = simd::fma(v, v, acc);
  }
  float ss = simd::sum(acc);
  for (; i < n; i++) ss = std::fma(x[i], x[i], ss);
  const float scale = 1.0f / std::sqrt(ss / float(n) + eps);
  const vf vs = set1(scale);
  for (i = 0; i + VL <= n; i += VL) store(out + i, simd::mul(simd::mul(load(x + i), vs), load(w + i)));
  for (; i < n; i++) out[i] = x[i] * scale * w[i];
}

void rope(float* x, int numHeads, int headDim, const float* cosv, const float* sinv) {
  const int half = headDim / 2;
  for (int h = 0; h < numHeads; h++) {
    float* v = x + int64_t(h) * headDim;
    for (int i = 0; i < half; i++) {
      const float a = v[i], b = v[i + half];
      v[i] = a * cosv[i] - b * sinv[i];
      v[i + half] = b * cosv[i] + a * sinv[i];
    }
  }
}

void siluMul(const float* g, const float* u, int64_t n, float* out) {
  for (int64_t i = 0; i < n; i++) out[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
}

void loadRow(const WeightView& W, int64_t row, float* out) {
  const uint8_t* src = static_cast<const uint8_t*>(W.data) + row * rowBytes(W.dtype, W.cols);
  if (isQuant(W.dtype)) return dequantizeRow(W.dtype, src, out, W.cols);
  convertRows(src, W.dtype, W.cols, out);
}

void storeKv(const float* src, void* dst, DType dtype, int64_t n) {
  if (dtype == DType::F32) {
    std::memcpy(dst, src, n * sizeof(float));
    return;
  }
  uint16_t* d = static_cast<uint16_t*>(dst);
  int64_t i = 0;
#if WEFT_SIMD
  for (; i + VL <= n; i += VL) storeF16(d + i, load(src + i));
#endif
  for (; i < n; i++) d[i] = f32ToF16(src[i]);
}

template <DType KD>
static inline vf loadKv(const uint8_t* p, int64_t i) {
  if constexpr (KD == DType::F16) {
#if WEFT_SIMD
    return loadF16(reinterpret_cast<const uint16_t*>(p) + i);
#else
    return f16ToF32(reinterpret_cast<const uint16_t*>(p)[i]);
#endif
  } else {
    return load(reinterpret_cast<const float*>(p) + i);
  }
}

// Head vectors of ND x VL floats (ND = 0: any length, scalar loops). Per head: scores q . k_j in
// one vector accumulator (k ascending, then simd::sum), softmax, then out = sum_j p_j v_j with the
// output in registers, j ascending.
template <DType KD, int ND>
static void attendGroupT(const float* q, int groupHeads, const KvAccessor& kv, int64_t numPos, float scale,
                         float* out, float* scores) {
  const int64_t d = kv.headDim, elt = KD == DType::F16 ? 2 : 4;
  const auto keyAt = [&](int64_t j) { return kv.pageBase[j / kv.pageTokens] + (j % kv.pageTokens) * d * elt; };
  const auto valueAt = [&](int64_t j) { return kv.pageBaseV[j / kv.pageTokens] + (j % kv.pageTokens) * d * elt; };
  for (int h = 0; h < groupHeads; h++) {
    const float* qh = q + h * d;
    float* sh = scores;
    float* oh = out + h * d;
    // scores[j] = q . k_j * scale
    for (int64_t j = 0; j < numPos; j++) {
      const uint8_t* kj = keyAt(j);
      float s;
      if constexpr (ND > 0) {
        vf acc = zero();
        for (int i = 0; i < ND; i++) acc = simd::fma(load(qh + i * VL), loadKv<KD>(kj, i * VL), acc);
        s = simd::sum(acc);
      } else {
        s = 0;
        for (int64_t i = 0; i < d; i++) s = std::fma(qh[i], loadScalar(kj, KD, i), s);
      }
      sh[j] = s * scale;
    }
    float maxScore = -INFINITY;
    for (int64_t j = 0; j < numPos; j++) maxScore = std::max(maxScore, sh[j]);
    // softmax numerators
    float total = 0;
    int64_t j = 0;
    const vf vmax = set1(maxScore);
    for (; j + VL <= numPos; j += VL) {
      vf e = expNonPositive(simd::sub(load(sh + j), vmax));
      store(sh + j, e);
      total += simd::sum(e);
    }
    for (; j < numPos; j++) {
      sh[j] = std::exp(sh[j] - maxScore);
      total += sh[j];
    }
    // out = sum_j p_j v_j
    const float inv = 1.0f / total;
    if constexpr (ND > 0) {
      vf acc[ND];
      for (int i = 0; i < ND; i++) acc[i] = zero();
      for (j = 0; j < numPos; j++) {
        const uint8_t* vj = valueAt(j);
        const vf vp = set1(sh[j]);
        for (int i = 0; i < ND; i++) acc[i] = simd::fma(vp, loadKv<KD>(vj, i * VL), acc[i]);
      }
      for (int i = 0; i < ND; i++) store(oh + i * VL, simd::mul(acc[i], set1(inv)));
    } else {
      for (int64_t i = 0; i < d; i++) oh[i] = 0;
      for (j = 0; j < numPos; j++) {
        const uint8_t* vj = valueAt(j);
        for (int64_t i = 0; i < d; i++) oh[i] = std::fma(sh[j], loadScalar(vj, KD, i), oh[i]);
      }
      for (int64_t i = 0; i < d; i++) oh[i] *= inv;
    }
  }
}

template <DType KD>
static void attendGroupD(const float* q, int groupHeads, const KvAccessor& kv, int64_t numPos, float scale,
                         float* out, float* scores) {
  switch (kv.headDim) {
#if WEFT_SIMD
    case 8 * VL: return attendGroupT<KD, 8>(q, groupHeads, kv, numPos, scale, out, scores);
    case 16 * VL: return attendGroupT<KD, 16>(q, groupHeads, kv, numPos, scale, out, scores);
    case 4 * VL: return attendGroupT<KD, 4>(q, groupHeads, kv, numPos, scale, out, scores);
    case 32 * VL: return attendGroupT<KD, 32>(q, groupHeads, kv, numPos, scale, out, scores);
#endif
    default: return attendGroupT<KD, 0>(q, groupHeads, kv, numPos, scale, out, scores);
  }
}

void attendGroup(const float* q, int groupHeads, const KvAccessor& kv, int64_t numPos, float scale,
                 float* out, float* scores) {
  if (kv.dtype == DType::F16)
    attendGroupD<DType::F16>(q, groupHeads, kv, numPos, scale, out, scores);
  else
    attendGroupD<DType::F32>(q, groupHeads, kv, numPos, scale, out, scores);
}

// options.tuning's keys (native/src/addon_spec.cpp parses them)
const TuningKey kTuningKeys[7] = {
    {"gemvRows", &KernelTuning::gemvRows, 1, 4},
    {"rowBlock", &KernelTuning::rowBlock, 1, 4},
    {"colBlock", &KernelTuning::colBlock, 1, 4},
    {"rowBlockK", &KernelTuning::rowBlockK, 1, 8},
    {"colBlockK", &KernelTuning::colBlockK, 1, 4},
    {"panelRows", &KernelTuning::panelRows, 1, 4096},
    {"prefetch", &KernelTuning::prefetch, 0, 1 << 16},
};

std::vector<KernelTuning> tuningCandidates() {
  const auto with = [](int KernelTuning::*field, int value) {
    KernelTuning t;
    t.*field = value;
    return t;
  };
  const auto kTiles = [](int rows, int cols) {
    KernelTuning t;
    t.rowBlockK = rows;
    t.colBlockK = cols;
    return t;
  };
  return {
      KernelTuning{},                            // the defaults (best measured on Zen 3, AVX2)
      with(&KernelTuning::gemvRows, 2),          // decode: two weight rows' streams at a time
      with(&KernelTuning::prefetch, 1024),       // a shorter software prefetch distance
      with(&KernelTuning::prefetch, 0),          // the hardware prefetchers alone
      kTiles(4, 2),                              // K-quants in 4 x 2 tiles (Q4_K alike, Q6_K ~15% slower here)
      with(&KernelTuning::colBlock, 4),          // Q8_0/Q4_0 in 4 x 4 tiles (32 vector registers: AVX-512)
  };
}

}  // namespace weft::cpu
