// GEMM over ggml-quantized weights: the activation rows are quantized once per call (Q8_0 or
// Q8_K blocks), then integer multiply-accumulate within each block and a float scale per block.
//
// Accumulation order, fixed per output so a row's result never depends on T, the [n0, n1) split,
// the micro-kernel shape or the thread count:
//  - K-quants: each super-block's integer sums are exact; the float part is the same scalar
//    sequence on every path (accumK), so the SIMD kernels equal the scalar reference bit for bit.
//  - Q8_0/Q4_0: each block's integer sums are converted per vector lane and accumulated with an
//    FMA per lane, lanes summed at the end (ggml's scheme). The scalar reference accumulates per
//    block instead, so the two differ by float rounding only (~1e-6 relative).
#include <algorithm>
#include <cmath>
#include <type_traits>
#include <utility>

#include "quant.h"
#include "quant_simd.h"

namespace weft::cpu {

// One super-block's contribution: d_x d_w isum - d_x dmin_w msum.
static inline float accumK(float y, float dxw, float dxm, int32_t isum, int32_t msum) {
  y = std::fma(dxw, float(isum), y);
  return std::fma(-dxm, float(msum), y);
}

// ---- scalar reference ----

static float referenceDot(DType type, const uint8_t* w, const QuantizedActs& a, int64_t t) {
  const int8_t* x = a.qs.data() + t * a.ldq;
  const float* dx = a.d.data() + t * a.ldd;
  const int64_t K = a.K;
  float y = 0;
  if (type == DType::Q8_0 || type == DType::Q4_0) {
    for (int64_t b = 0; b < K / 32; b++) {
      const int8_t* xb = x + 32 * b;
      int32_t isum = 0;
      float dw;
      if (type == DType::Q8_0) {
        const auto& blk = reinterpret_cast<const BlockQ8_0*>(w)[b];
        for (int j = 0; j < 32; j++) isum += blk.qs[j] * xb[j];
        dw = f16ToF32(blk.d);
      } else {
        const auto& blk = reinterpret_cast<const BlockQ4_0*>(w)[b];
        for (int j = 0; j < 16; j++) isum += ((blk.qs[j] & 0xF) - 8) * xb[j] + ((blk.qs[j] >> 4) - 8) * xb[j + 16];
        dw = f16ToF32(blk.d);
      }
      y = std::fma(dw * dx[b], float(isum), y);
    }
    return y;
  }
  const int16_t* s16 = a.bsum16.data() + t * (K / 16);
  const int16_t* s32 = a.bsum32.data() + t * (K / 32);
  for (int64_t b = 0; b < K / kQK; b++) {
    const int8_t* xb = x + kQK * b;
    int32_t isum = 0, msum = 0;
    float dw, dmin = 0;
    if (type == DType::Q6_K) {
      const auto& blk = reinterpret_cast<const BlockQ6_K*>(w)[b];
      for (int s = 0; s < 16; s++) {
        int32_t part = 0;
        for (int l = 0; l < 16; l++) {
          const int e = 16 * s + l, n = e / 128, k = (e % 128) / 32, j = e % 32;
          const uint8_t lo = blk.ql[64 * n + 32 * (k & 1) + j];
          part += ((k < 2 ? lo & 0xF : lo >> 4) | ((blk.qh[32 * n + j] >> (2 * k)) & 3) << 4) * xb[e];
        }
        isum += blk.scales[s] * (part - 32 * s16[16 * b + s]);
      }
      dw = f16ToF32(blk.d);
    } else {
      const bool q5 = type == DType::Q5_K;
      const uint8_t* scales = q5 ? reinterpret_cast<const BlockQ5_K*>(w)[b].scales : reinterpret_cast<const BlockQ4_K*>(w)[b].scales;
      const uint8_t* qs = q5 ? reinterpret_cast<const BlockQ5_K*>(w)[b].qs : reinterpret_cast<const BlockQ4_K*>(w)[b].qs;
      const uint8_t* qh = q5 ? reinterpret_cast<const BlockQ5_K*>(w)[b].qh : nullptr;
      const uint16_t* dd = q5 ? &reinterpret_cast<const BlockQ5_K*>(w)[b].d : &reinterpret_cast<const BlockQ4_K*>(w)[b].d;
      uint8_t sm[16];
      unpackScalesK4(scales, sm);
      for (int g = 0; g < 8; g++) {
        int32_t part = 0;
        for (int l = 0; l < 32; l++) {
          const uint8_t q = qs[32 * (g / 2) + l];
          const int v = ((g & 1) ? q >> 4 : q & 0xF) + (qh && (qh[l] >> g & 1) ? 16 : 0);
          part += v * xb[32 * g + l];
        }
        isum += sm[g] * part;
        msum += sm[8 + g] * s32[8 * b + g];
      }
      dw = f16ToF32(dd[0]);
      dmin = f16ToF32(dd[1]);
    }
    y = accumK(y, dx[b] * dw, dx[b] * dmin, isum, msum);
  }
  return y;
}

#if WEFT_QSIMD
using namespace qsimd;

// ---- Q8_0 / Q4_0: R activation rows x C weight rows, G blocks per vector ----
// Per block: the C weight blocks loaded once (with their scales as vectors), then per row of X its
// block, |x| and the row's scale once, and per (row, weight row) one signed byte dot product and
// an FMA of its lanes by d_x d_w. Q8_0 takes |x| x (w sign(x)) (ggml takes |w| x (x sign(w)): the
// same integers) so that only the weight blocks and one row stay live: 4 x 2 tiles fit AVX2's
// 16 registers. `prefetch`: weight bytes ahead to prefetch (0: none).
template <class V, DType WT, int R, int C>
static void kernel32(const uint8_t* W, uint64_t ldw, const QuantizedActs& a, int64_t t0, float* out, int prefetch) {
  constexpr int G = V::G;
  constexpr uint64_t bb = WT == DType::Q8_0 ? sizeof(BlockQ8_0) : sizeof(BlockQ4_0);
  const int64_t nb = a.K / 32;
  const int8_t* xr[R];
  const float* dr[R];
  const int32_t* sr[R];
  for (int r = 0; r < R; r++) {
    xr[r] = a.qs.data() + (t0 + r) * a.ldq;
    dr[r] = a.d.data() + (t0 + r) * a.ldd;
    sr[r] = WT == DType::Q4_0 ? a.negSum32.data() + (t0 + r) * a.ldd : nullptr;
  }
  typename V::F acc[R][C];
  for (int r = 0; r < R; r++)
    for (int c = 0; c < C; c++) acc[r][c] = V::zeroF();
  for (int64_t b = 0; b < nb; b += G) {
    typename V::I w[C];
    alignas(64) float dw[C][G];
    for (int c = 0; c < C; c++) {
      __m256i grp[G];
      for (int i = 0; i < G; i++) {
        if (G > 1 && b + i >= nb) {  // the odd block of a 512-bit pair
          grp[i] = _mm256_setzero_si256();
          dw[c][i] = 0;
          continue;
        }
        const uint8_t* blk = W + c * ldw + (b + i) * bb;
        if (prefetch && (b + i) % 2 == 0) _mm_prefetch(reinterpret_cast<const char*>(blk + prefetch), _MM_HINT_T0);
        if constexpr (WT == DType::Q8_0) {
          grp[i] = load32(reinterpret_cast<const BlockQ8_0*>(blk)->qs);
          dw[c][i] = halfToFloat(reinterpret_cast<const BlockQ8_0*>(blk)->d);
        } else {
          grp[i] = blockQ4_0(*reinterpret_cast<const BlockQ4_0*>(blk));
          dw[c][i] = halfToFloat(reinterpret_cast<const BlockQ4_0*>(blk)->d);
        }
      }
      w[c] = V::join(grp);
    }
    for (int r = 0; r < R; r++) {
      const typename V::I x = V::loadX(xr[r] + 32 * b);
      const typename V::F dx = V::scales(dr[r] + b);
      if constexpr (WT == DType::Q8_0) {
        const typename V::I ax = V::absW(x);
        for (int c = 0; c < C; c++) {
          const typename V::I isum = V::dotU8S8(V::zero(), ax, V::signX(w[c], x));
          acc[r][c] = V::fma(V::cvt(isum), V::mul(dx, V::scales(dw[c])), acc[r][c]);
        }
      } else {
        // sum (l - 8) x = sum l x - 8 sum x, the -8 sum x spread over the block's 8 lanes
        const typename V::I init = V::bcast(sr[r] + b);
        for (int c = 0; c < C; c++) {
          const typename V::I isum = V::dotU8S8(init, w[c], x);
          acc[r][c] = V::fma(V::cvt(isum), V::mul(dx, V::scales(dw[c])), acc[r][c]);
        }
      }
    }
  }
  for (int r = 0; r < R; r++)
    for (int c = 0; c < C; c++) out[r * C + c] = V::hsumF(acc[r][c]);
}

// ---- K-quants: per weight super-block, its groups' levels and scales once for R rows ----
template <DType WT>
struct KBlock {
  const uint8_t* p;
  __m128i sm;      // Q4_K/Q5_K: 8 scales, 8 mins (bytes)
  __m256i s16;     // Q4_K/Q5_K: scales as int16
  __m128i sc8;     // Q6_K: the 16 int8 scales
  float d, dmin;
  explicit KBlock(const uint8_t* blk) : p(blk) {
    if constexpr (WT == DType::Q6_K) {
      const auto* b = reinterpret_cast<const BlockQ6_K*>(blk);
      sc8 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b->scales));
      d = halfToFloat(b->d);
      dmin = 0;
    } else {
      const auto* b = reinterpret_cast<const BlockQ4_K*>(blk);  // Q5_K starts alike
      sm = unpackScalesK4Simd(b->scales);
      s16 = scalesK4(sm);
      d = halfToFloat(b->d);
      dmin = halfToFloat(b->dmin);
    }
  }
  __m256i levels(int g) const {
    if constexpr (WT == DType::Q4_K) return groupQ4K(reinterpret_cast<const BlockQ4_K*>(p)->qs, g);
    else if constexpr (WT == DType::Q5_K) {
      const auto* b = reinterpret_cast<const BlockQ5_K*>(p);
      return groupQ5K(b->qs, b->qh, g);
    } else {
      const auto* b = reinterpret_cast<const BlockQ6_K*>(p);
      return groupQ6K(b->ql, b->qh, g);
    }
  }
  __m256i scale(int g) const {
    if constexpr (WT == DType::Q6_K) return scaleQ6K(sc8, g);
    else return scaleK4(s16, g);
  }
  // (isum correction, msum) from the activation row's block sums
  void sums(const int16_t* bsum16, const int16_t* bsum32, int32_t& isum, int32_t& msum) const {
    if constexpr (WT == DType::Q6_K) {
      isum -= 32 * dotScales16(sc8, bsum16);
      msum = 0;
    } else {
      msum = dotMins(sm, bsum32);
    }
  }
};

template <class V, DType WT, int R, int C>
static void kernelK(const uint8_t* W, uint64_t ldw, const QuantizedActs& a, int64_t t0, float* out, int prefetch) {
  constexpr int G = V::G;
  const int64_t nb = a.K / kQK;
  const uint64_t bb = blockBytes(WT);
  const int8_t* xr[R];
  const float* dr[R];
  const int16_t *s16r[R], *s32r[R];
  for (int r = 0; r < R; r++) {
    xr[r] = a.qs.data() + (t0 + r) * a.ldq;
    dr[r] = a.d.data() + (t0 + r) * a.ldd;
    s16r[r] = a.bsum16.data() + (t0 + r) * (a.K / 16);
    s32r[r] = a.bsum32.data() + (t0 + r) * (a.K / 32);
  }
  float y[R][C] = {};
  for (int64_t b = 0; b < nb; b++) {
    for (int c = 0; c < C; c++) {
      const uint8_t* blk = W + c * ldw + b * bb;
      if (prefetch)
        for (uint64_t o = 0; o < bb; o += 64) _mm_prefetch(reinterpret_cast<const char*>(blk + prefetch + o), _MM_HINT_T0);
      const KBlock<WT> kb(blk);
      typename V::I acc[R];
      for (int r = 0; r < R; r++) acc[r] = V::zero();
#pragma GCC unroll 8
      for (int g = 0; g < 8; g += G) {
        __m256i lv[G], sc[G];
        for (int i = 0; i < G; i++) {
          lv[i] = kb.levels(g + i);
          sc[i] = kb.scale(g + i);
        }
        const typename V::I wv = V::join(lv), sv = V::join(sc);
        for (int r = 0; r < R; r++)
          acc[r] = V::dotScaled(acc[r], wv, V::loadX(xr[r] + kQK * b + 32 * g), sv);
      }
      for (int r = 0; r < R; r++) {
        int32_t isum = V::hsum(acc[r]), msum;
        kb.sums(s16r[r] + 16 * b, s32r[r] + 8 * b, isum, msum);
        const float dx = dr[r][b];
        y[r][c] = accumK(y[r][c], dx * kb.d, dx * kb.dmin, isum, msum);
      }
    }
  }
  for (int r = 0; r < R; r++)
    for (int c = 0; c < C; c++) out[r * C + c] = y[r][c];
}

// kernelK's tiles of 8 outputs on AVX2 (4 rows of X x 2 weight rows, or 8 x 1) with the per-block
// tail in registers: output o = c R + r in lane o; the 8 integer sums reduced together (hadd
// trees), the mins (Q6_K: the -32 offset) one madd per pair of outputs, and accumK done lane-wise:
// the same float operations as the scalar tail, so the same bits.
template <DType WT, int C>
static void kernelK8(const uint8_t* W, uint64_t ldw, const QuantizedActs& a, int64_t t0, float* out, int prefetch) {
  constexpr int R = 8 / C;
  const int64_t nb = a.K / kQK;
  const uint64_t bb = blockBytes(WT);
  const int8_t* xr[R];
  const float* dr[R];
  const int16_t* sr[R];  // Q4_K/Q5_K: sums of 32; Q6_K: sums of 16
  for (int r = 0; r < R; r++) {
    xr[r] = a.qs.data() + (t0 + r) * a.ldq;
    dr[r] = a.d.data() + (t0 + r) * a.ldd;
    sr[r] = WT == DType::Q6_K ? a.bsum16.data() + (t0 + r) * (a.K / 16) : a.bsum32.data() + (t0 + r) * (a.K / 32);
  }
  // per 128-bit half: lane i of [v0 v1 v2 v3] = the sum of v_i's four lanes
  const auto reduce4 = [](const __m256i* v) {
    return _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]));
  };
  const auto halves = [](__m256i v) { return _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1)); };
  // 8 vectors -> the total of each in lanes 0..7
  const auto reduce8 = [&](const __m256i* v) { return _mm256_set_m128i(halves(reduce4(v + 4)), halves(reduce4(v))); };
  __m256 y = _mm256_setzero_ps();
  for (int64_t b = 0; b < nb; b++) {
    const KBlock<WT> kb[2] = {KBlock<WT>(W + b * bb), KBlock<WT>(W + (C == 2 ? ldw : 0) + b * bb)};  // (C = 1: [1] unused)
    if (prefetch)
      for (int c = 0; c < C; c++)
        for (uint64_t o = 0; o < bb; o += 64) _mm_prefetch(reinterpret_cast<const char*>(W + c * ldw + b * bb + prefetch + o), _MM_HINT_T0);
    __m256i acc[8];
    for (int c = 0; c < C; c++) {
      for (int r = 0; r < R; r++) acc[c * R + r] = _mm256_setzero_si256();
#pragma GCC unroll 8
      for (int g = 0; g < 8; g++) {
        const __m256i wv = kb[c].levels(g), sv = kb[c].scale(g);
        for (int r = 0; r < R; r++) acc[c * R + r] = V256::dotScaled(acc[c * R + r], wv, load32(xr[r] + kQK * b + 32 * g), sv);
      }
    }
    __m256i isum = reduce8(acc);
    __m256i msum = _mm256_setzero_si256();
    if constexpr (WT == DType::Q6_K) {
      // isum -= 32 sum_s scales[s] bsum16[s]
      __m256i p[8];
      for (int c = 0; c < C; c++) {
        const __m256i sc16 = _mm256_cvtepi8_epi16(kb[c].sc8);
        for (int r = 0; r < R; r++) p[c * R + r] = _mm256_madd_epi16(sc16, load32(sr[r] + 16 * b));
      }
      isum = _mm256_sub_epi32(isum, _mm256_slli_epi32(reduce8(p), 5));
    } else {
      // msum = sum_g mins[g] bsum32[g]: outputs o and o + 4 in one madd, reduced to lanes o, o + 4
      __m128i mins[C];
      for (int c = 0; c < C; c++) mins[c] = _mm_cvtepu8_epi16(_mm_srli_si128(kb[c].sm, 8));
      const auto sums = [&](int r) { return _mm_loadu_si128(reinterpret_cast<const __m128i*>(sr[r] + 8 * b)); };
      __m256i p[4];
      for (int o = 0; o < 4; o++)
        p[o] = _mm256_madd_epi16(_mm256_set_m128i(mins[(o + 4) / R], mins[o / R]), _mm256_set_m128i(sums((o + 4) % R), sums(o % R)));
      msum = reduce4(p);
    }
    alignas(32) float dx[8], dw[8], dm[8];
    for (int o = 0; o < 8; o++) {
      dx[o] = dr[o % R][b];
      dw[o] = kb[o / R].d;
      dm[o] = kb[o / R].dmin;
    }
    const __m256 dxv = _mm256_load_ps(dx);
    // accumK lane-wise
    y = _mm256_fmadd_ps(_mm256_mul_ps(dxv, _mm256_load_ps(dw)), _mm256_cvtepi32_ps(isum), y);
    y = _mm256_fnmadd_ps(_mm256_mul_ps(dxv, _mm256_load_ps(dm)), _mm256_cvtepi32_ps(msum), y);
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, y);
  for (int r = 0; r < R; r++)
    for (int c = 0; c < C; c++) out[r * C + c] = lanes[c * R + r];
}

#if defined(WEFT_QUANT_EMU512)
using VW = Emu512;
#elif defined(__AVX512BW__)
using VW = V512;
#else
using VW = V256;
#endif

// Micro-kernel shapes available: up to kMaxRows32 (kMaxRowsK) rows of X x kMaxCols weight rows
// per pass; KernelTuning picks one (its defaults: 4 x 2, and one weight row at a time for a single
// row of X: one sequential stream per thread, measured faster from DRAM than 4 interleaved rows).
constexpr int kMaxRows32 = 4, kMaxRowsK = 8, kMaxCols = 4;

using QuantFn = void (*)(const uint8_t*, uint64_t, const QuantizedActs&, int64_t, float*, int);

struct QuantTable {
  QuantFn fn[kMaxRowsK][kMaxCols] = {};
  int rows = 0;
};

template <DType WT, int R, int... Cs>
static void fillRow(QuantTable& t, std::integer_sequence<int, Cs...>) {
  constexpr bool k = WT != DType::Q8_0 && WT != DType::Q4_0;
  if constexpr (k) ((t.fn[R - 1][Cs] = &kernelK<VW, WT, R, Cs + 1>), ...);
  else ((t.fn[R - 1][Cs] = &kernel32<VW, WT, R, Cs + 1>), ...);
  if constexpr (k && std::is_same_v<VW, V256> && R == 4) t.fn[3][1] = &kernelK8<WT, 2>;
  if constexpr (k && std::is_same_v<VW, V256> && R == 8) t.fn[7][0] = &kernelK8<WT, 1>;
}
template <DType WT, int... Rs>
static QuantTable makeTable(std::integer_sequence<int, Rs...>) {
  QuantTable t;
  t.rows = sizeof...(Rs);
  (fillRow<WT, Rs + 1>(t, std::make_integer_sequence<int, kMaxCols>{}), ...);
  return t;
}

static const QuantTable& table(DType type) {
  static const QuantTable q8 = makeTable<DType::Q8_0>(std::make_integer_sequence<int, kMaxRows32>{});
  static const QuantTable q4 = makeTable<DType::Q4_0>(std::make_integer_sequence<int, kMaxRows32>{});
  static const QuantTable q4k = makeTable<DType::Q4_K>(std::make_integer_sequence<int, kMaxRowsK>{});
  static const QuantTable q5k = makeTable<DType::Q5_K>(std::make_integer_sequence<int, kMaxRowsK>{});
  static const QuantTable q6k = makeTable<DType::Q6_K>(std::make_integer_sequence<int, kMaxRowsK>{});
  switch (type) {
    case DType::Q8_0: return q8;
    case DType::Q4_0: return q4;
    case DType::Q4_K: return q4k;
    case DType::Q5_K: return q5k;
    default: return q6k;
  }
}
#endif

static inline void storeOut(float* y, const float* bias, int64_t n, float v, bool accumulate) {
  if (bias) v += bias[n];
  *y = accumulate ? *y + v : v;
}

void gemmQuant(const float* X, int64_t T, int64_t ldx, const WeightView& W, int64_t n0, int64_t n1, float* Y,
               int64_t ldy, const float* bias, bool accumulate, bool reference, const KernelTuning& tuning) {
  thread_local QuantizedActs acts;
  quantizeActivations(W.dtype, X, T, ldx, W.cols, acts);
  const uint64_t rb = rowBytes(W.dtype, W.cols);
  const uint8_t* base = static_cast<const uint8_t*>(W.data);
#if WEFT_QSIMD
  if (!reference) {
    const QuantTable& tab = table(W.dtype);
    const bool k = W.dtype != DType::Q8_0 && W.dtype != DType::Q4_0;
    const int R = std::clamp(T == 1 ? 1 : k ? tuning.rowBlockK : tuning.rowBlock, 1, tab.rows);
    const int C = std::clamp(T == 1 ? tuning.gemvRows : k ? tuning.colBlockK : tuning.colBlock, 1, kMaxCols);
    const int64_t panel = std::max<int64_t>(C, tuning.panelRows);
    float out[kMaxRowsK * kMaxCols];
    // a panel of weight rows stays in cache while every row block of X passes over it
    for (int64_t p = n0; p < n1; p += panel) {
      const int64_t pc = std::min<int64_t>(panel, n1 - p);
      for (int64_t t = 0; t < T; t += R) {
        const int r = int(std::min<int64_t>(R, T - t));
        for (int64_t c0 = 0; c0 < pc; c0 += C) {
          const int c = int(std::min<int64_t>(C, pc - c0));
          tab.fn[r - 1][c - 1](base + (p + c0) * rb, rb, acts, t, out, tuning.prefetch);
          for (int i = 0; i < r; i++)
            for (int j = 0; j < c; j++) storeOut(Y + (t + i) * ldy + p + c0 + j, bias, p + c0 + j, out[i * c + j], accumulate);
        }
      }
    }
    return;
  }
#endif
  (void)reference;
  (void)tuning;
  for (int64_t t = 0; t < T; t++)
    for (int64_t n = n0; n < n1; n++)
      storeOut(Y + t * ldy + n, bias, n, referenceDot(W.dtype, base + n * rb, acts, t), accumulate);
}

const char* quantKernelName() {
#if defined(WEFT_QUANT_EMU512)
  return "emu512";
#elif defined(__AVX512BW__) && defined(__AVX512VNNI__)
  return "avx512-vnni";
#elif defined(__AVX512BW__)
  return "avx512bw";
#elif WEFT_QSIMD && defined(__AVXVNNI__)
  return "avx-vnni";
#elif WEFT_QSIMD
  return "avx2";
#else
  return "scalar";
#endif
}

}  // namespace weft::cpu
