// Scalar (de)quantization of ggml's block formats and the activation quantizers. The weight
// quantizers search each block's scales for the least weighted squared error (the ideas of
// ggml's make_qx_quants / make_qkx2_quants), then requantize against the stored (f16, 6-bit)
// scales so the levels match what dequantization will see.
#include "quant.h"

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <thread>

namespace weft::cpu {

static inline int nearestInt(float x) { return int(std::lrint(x)); }
static inline uint16_t toHalf(float x) { return f32ToF16(x); }
static inline float fromHalf(uint16_t h) { return f16ToF32(h); }

void unpackScalesK4(const uint8_t* q, uint8_t out[16]) {
  for (int j = 0; j < 8; j++) {
    if (j < 4) {
      out[j] = q[j] & 63;
      out[8 + j] = q[j + 4] & 63;
    } else {
      out[j] = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
      out[8 + j] = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
  }
}

// Inverse of unpackScalesK4 (values < 64).
static void packScalesK4(const uint8_t ls[8], const uint8_t lm[8], uint8_t q[12]) {
  for (int j = 0; j < 4; j++) {
    q[j] = ls[j];
    q[j + 4] = lm[j];
  }
  for (int j = 4; j < 8; j++) {
    q[j + 4] = (ls[j] & 0xF) | ((lm[j] & 0xF) << 4);
    q[j - 4] |= (ls[j] >> 4) << 6;
    q[j] |= (lm[j] >> 4) << 6;
  }
}

// ---- dequantization ----

static void dequantQ8_0(const BlockQ8_0& b, float* y) {
  const float d = fromHalf(b.d);
  for (int j = 0; j < 32; j++) y[j] = d * b.qs[j];
}
static void dequantQ4_0(const BlockQ4_0& b, float* y) {
  const float d = fromHalf(b.d);
  for (int j = 0; j < 16; j++) {
    y[j] = d * ((b.qs[j] & 0xF) - 8);
    y[j + 16] = d * ((b.qs[j] >> 4) - 8);
  }
}
// Q4_K and Q5_K: element 64c + l (+32) is the low (high) nibble of qs[32c + l], plus 16 when
// bit 2c (2c + 1) of qh[l] is set (Q5_K).
static void dequantK45(uint16_t dh, uint16_t dminh, const uint8_t* scales, const uint8_t* qs, const uint8_t* qh,
                       float* y) {
  uint8_t sm[16];
  unpackScalesK4(scales, sm);
  const float d = fromHalf(dh), dmin = fromHalf(dminh);
  for (int g = 0; g < 8; g++) {
    const float dl = d * sm[g], ml = dmin * sm[8 + g];
    const uint8_t* q = qs + 32 * (g / 2);
    for (int l = 0; l < 32; l++) {
      int v = (g & 1) ? q[l] >> 4 : q[l] & 0xF;
      if (qh && (qh[l] >> g & 1)) v += 16;
      y[32 * g + l] = dl * v - ml;
    }
  }
}
// Element 128n + 32k + l (k = 0..3): the low (k < 2) or high nibble of ql[64n + 32(k & 1) + l]
// with bits 2k..2k+1 of qh[32n + l] on top, minus 32; scale scales[(128n + 32k + l) / 16].
static inline int q6Level(const BlockQ6_K& b, int e) {
  const int n = e / 128, k = (e % 128) / 32, l = e % 32;
  const uint8_t lo = b.ql[64 * n + 32 * (k & 1) + l];
  const int low = k < 2 ? lo & 0xF : lo >> 4;
  const int high = (b.qh[32 * n + l] >> (2 * k)) & 3;
  return (low | high << 4) - 32;
}
static void dequantQ6_K(const BlockQ6_K& b, float* y) {
  const float d = fromHalf(b.d);
  for (int e = 0; e < kQK; e++) y[e] = d * b.scales[e / 16] * q6Level(b, e);
}

static void dequantBlock(DType type, const uint8_t* p, float* y) {
  switch (type) {
    case DType::Q8_0: return dequantQ8_0(*reinterpret_cast<const BlockQ8_0*>(p), y);
    case DType::Q4_0: return dequantQ4_0(*reinterpret_cast<const BlockQ4_0*>(p), y);
    case DType::Q4_K: {
      const auto& b = *reinterpret_cast<const BlockQ4_K*>(p);
      return dequantK45(b.d, b.dmin, b.scales, b.qs, nullptr, y);
    }
    case DType::Q5_K: {
      const auto& b = *reinterpret_cast<const BlockQ5_K*>(p);
      return dequantK45(b.d, b.dmin, b.scales, b.qs, b.qh, y);
    }
    case DType::Q6_K: return dequantQ6_K(*reinterpret_cast<const BlockQ6_K*>(p), y);
    default: throw WeftError(Err::UnsupportedDtype, std::string(dtypeName(type)) + " is not a block type");
  }
}

void dequantizeRow(DType type, const void* src, float* dst, int64_t n) {
  const int64_t be = blockElems(type);
  const uint8_t* p = static_cast<const uint8_t*>(src);
  for (int64_t i = 0; i < n / be; i++) dequantBlock(type, p + i * blockBytes(type), dst + i * be);
}


// ---- scale searches ----

#if defined(__AVX2__) && defined(__FMA__)
static inline float sum8(__m256 a) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}
#endif

struct LevelSums {
  float l = 0, l2 = 0, xl = 0;  // sum w l, sum w l^2, sum w x l
};
// Levels l = clamp(round(iscale (x - shift)), lmin, lmax) (as floats) and their weighted sums.
[[gnu::always_inline]] static inline LevelSums levelSums(int n, const float* x, const float* w, float shift, float iscale, float lmin, float lmax,
                           float* levels) {
  LevelSums s;
  int i = 0;
#if defined(__AVX2__) && defined(__FMA__)
  __m256 sl = _mm256_setzero_ps(), sl2 = sl, sxl = sl;
  const __m256 vs = _mm256_set1_ps(shift), vi = _mm256_set1_ps(iscale), vlo = _mm256_set1_ps(lmin), vhi = _mm256_set1_ps(lmax);
  for (; i + 8 <= n; i += 8) {
    const __m256 xv = _mm256_loadu_ps(x + i);
    __m256 l = _mm256_round_ps(_mm256_mul_ps(_mm256_sub_ps(xv, vs), vi), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    l = _mm256_min_ps(_mm256_max_ps(l, vlo), vhi);
    _mm256_storeu_ps(levels + i, l);
    const __m256 wl = _mm256_mul_ps(_mm256_loadu_ps(w + i), l);
    sl = _mm256_add_ps(sl, wl);
    sl2 = _mm256_fmadd_ps(wl, l, sl2);
    sxl = _mm256_fmadd_ps(wl, xv, sxl);
  }
  s.l = sum8(sl);
  s.l2 = sum8(sl2);
  s.xl = sum8(sxl);
#endif
  for (; i < n; i++) {
    const float l = std::clamp(std::nearbyint((x[i] - shift) * iscale), lmin, lmax);
    levels[i] = l;
    s.l += w[i] * l;
    s.l2 += w[i] * l * l;
    s.xl += w[i] * x[i] * l;
  }
  return s;
}

// Fits x ~ scale * l with integer levels l in [-nmax, nmax - 1]: tries inverse scales around the
// absmax one ((nmax + 0.1 s) / max for s in -steps..steps) and keeps the best weighted
// least-squares fit (scale refit to the chosen levels). Returns the scale; L gets l + nmax.
static float fitSymmetric(int n, int nmax, const float* x, const float* w, int steps, int8_t* L) {
  float amax = 0, max = 0;
  for (int i = 0; i < n; i++)
    if (std::fabs(x[i]) > amax) amax = std::fabs(x[i]), max = x[i];
  if (amax < 1e-15f) {
    for (int i = 0; i < n; i++) L[i] = int8_t(nmax);
    return 0;
  }
  float bestScale = 0, bestQuality = -1, levels[32], bestLevels[32] = {};
  for (int s = -steps; s <= steps; s++) {
    const LevelSums sums = levelSums(n, x, w, 0, -(nmax + 0.1f * s) / max, float(-nmax), float(nmax - 1), levels);
    // the error at the optimal scale xl/l2 is sum(w x^2) - xl^2/l2: maximize the latter
    if (sums.l2 > 0 && sums.xl * sums.xl > bestQuality * sums.l2) {
      bestQuality = sums.xl * sums.xl / sums.l2;
      bestScale = sums.xl / sums.l2;
      std::copy(levels, levels + n, bestLevels);
    }
  }
  for (int i = 0; i < n; i++) L[i] = int8_t(int(bestLevels[i]) + nmax);
  return bestScale;
}

// Fits x ~ scale * l - min with l in [0, nmax], min >= 0: tries inverse scales
// (nmax + rmin + rdelta s) / (max - min0) for s = 0..steps, refits scale and min to each set of
// levels by weighted least squares and keeps the smallest weighted squared error.
static float fitAffine(int n, int nmax, const float* x, const float* w, float rmin, float rdelta, int steps,
                       uint8_t* L, float* theMin) {
  float lo = x[0], hi = x[0], sumW = 0, sumX = 0, sumX2 = 0;
  for (int i = 0; i < n; i++) {
    lo = std::min(lo, x[i]);
    hi = std::max(hi, x[i]);
    sumW += w[i];
    sumX += w[i] * x[i];
    sumX2 += w[i] * x[i] * x[i];
  }
  lo = std::min(lo, 0.0f);
  if (hi <= lo) {
    for (int i = 0; i < n; i++) L[i] = 0;
    *theMin = -lo;
    return 0;
  }
  // sum w (scale l + offset - x)^2 from the sums over the levels
  auto error = [&](float sc, float off, const LevelSums& s) {
    return sc * sc * s.l2 + 2 * sc * off * s.l - 2 * sc * s.xl + off * off * sumW - 2 * off * sumX + sumX2;
  };
  float scale = (hi - lo) / nmax, offset = lo, levels[32], bestLevels[32];
  float best = error(scale, offset, levelSums(n, x, w, lo, 1 / scale, 0, float(nmax), bestLevels));
  for (int s = 0; s <= steps; s++) {
    const LevelSums sums = levelSums(n, x, w, lo, (nmax + rmin + rdelta * s) / (hi - lo), 0, float(nmax), levels);
    const float det = sumW * sums.l2 - sums.l * sums.l;
    if (det <= 0) continue;
    const float inv = 1 / det;
    float sc = (sumW * sums.xl - sumX * sums.l) * inv, off = (sums.l2 * sumX - sums.l * sums.xl) * inv;
    if (off > 0) {  // the format only subtracts
      off = 0;
      sc = sums.xl / sums.l2;
    }
    const float e = error(sc, off, sums);
    if (e < best) {
      best = e;
      scale = sc;
      offset = off;
      std::copy(levels, levels + n, bestLevels);
    }
  }
  for (int i = 0; i < n; i++) L[i] = uint8_t(bestLevels[i]);
  *theMin = -offset;
  return scale;
}

// ---- quantization, one block ----

// Shared with the activation quantizer: d = amax / 127 (stored as f16), q = round(x / d).
static float quantizeQ8_0Block(const float* x, int8_t* qs) {
  float amax = 0;
  for (int j = 0; j < 32; j++) amax = std::max(amax, std::fabs(x[j]));
  const float d = amax / 127, id = d ? 1 / d : 0;
  for (int j = 0; j < 32; j++) qs[j] = int8_t(nearestInt(x[j] * id));
  return fromHalf(toHalf(d));
}

// Activations: as llama.cpp's x86 quantize_row_q8_0 does at run time (id = 127 / amax, not 1 / d;
// rounding half to even), so that both engines see the same activation blocks on the same file.
static float quantizeQ8_0Acts(const float* x, int8_t* qs) {
  float amax = 0;
  for (int j = 0; j < 32; j++) amax = std::max(amax, std::fabs(x[j]));
  const float d = amax / 127.f, id = amax != 0 ? 127.f / amax : 0;
  for (int j = 0; j < 32; j++) qs[j] = int8_t(nearestInt(x[j] * id));
  return fromHalf(toHalf(d));
}

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
// The same rounding in registers: _mm256_cvtps_epi32 rounds half to even as lrint does.
static inline float maxAbs(const float* x, int n) {
  const __m256 signBit = _mm256_set1_ps(-0.0f);
  __m256 m = _mm256_setzero_ps();
  for (int j = 0; j < n; j += 8) m = _mm256_max_ps(m, _mm256_andnot_ps(signBit, _mm256_loadu_ps(x + j)));
  __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
  h = _mm_max_ps(h, _mm_movehl_ps(h, h));
  return _mm_cvtss_f32(_mm_max_ss(h, _mm_movehdup_ps(h)));
}
// 32 quants of x * scale (|values| <= 127 after the clamp) into q; returns their sum
static inline int32_t roundBlock32(const float* x, float scale, int8_t* q) {
  const __m256 s = _mm256_set1_ps(scale);
  const __m256i lo = _mm256_set1_epi32(-127), hi = _mm256_set1_epi32(127);
  __m256i v[4];
  for (int i = 0; i < 4; i++)
    v[i] = _mm256_min_epi32(_mm256_max_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + 8 * i), s)), lo), hi);
  const __m256i sum = _mm256_add_epi32(_mm256_add_epi32(v[0], v[1]), _mm256_add_epi32(v[2], v[3]));
  const __m256i w = _mm256_packs_epi16(_mm256_packs_epi32(v[0], v[1]), _mm256_packs_epi32(v[2], v[3]));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(q), _mm256_permutevar8x32_epi32(w, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
  __m128i t = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
  t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0x4E));
  return _mm_cvtsi128_si32(_mm_add_epi32(t, _mm_shuffle_epi32(t, 0xB1)));
}
#endif

static void quantizeQ4_0(const float* x, BlockQ4_0& b) {
  float w[32];
  int8_t L[32];
  for (int j = 0; j < 32; j++) w[j] = 1;
  const float d = fitSymmetric(32, 8, x, w, 6, L);
  b.d = toHalf(d);
  const float dh = fromHalf(b.d), id = dh ? 1 / dh : 0;
  for (int j = 0; j < 32; j++) L[j] = int8_t(std::clamp(nearestInt(x[j] * id), -8, 7) + 8);
  for (int j = 0; j < 16; j++) b.qs[j] = uint8_t(L[j] | L[j + 16] << 4);
}

// Q4_K / Q5_K: per 32-element sub-block a scale and a min (weights |x| + rms, as ggml), then the
// super-block's d and dmin in f16 with 6-bit multiples per sub-block, then levels against those.
static void quantizeK45(const float* x, int nmax, uint16_t& dOut, uint16_t& dminOut, uint8_t* packed, uint8_t* L) {
  float scales[8], mins[8], w[32];
  for (int g = 0; g < 8; g++) {
    const float* xg = x + 32 * g;
    float sumX2 = 0;
    for (int l = 0; l < 32; l++) sumX2 += xg[l] * xg[l];
    const float rms = std::sqrt(sumX2 / 32);
    for (int l = 0; l < 32; l++) w[l] = rms + std::fabs(xg[l]);
    scales[g] = nmax == 15 ? fitAffine(32, 15, xg, w, -1.0f, 0.1f, 20, L + 32 * g, &mins[g])
                           : fitAffine(32, 31, xg, w, -0.5f, 0.1f, 15, L + 32 * g, &mins[g]);
  }
  const float maxScale = *std::max_element(scales, scales + 8), maxMin = *std::max_element(mins, mins + 8);
  const float invScale = maxScale > 0 ? 63 / maxScale : 0, invMin = maxMin > 0 ? 63 / maxMin : 0;
  uint8_t ls[8], lm[8];
  for (int g = 0; g < 8; g++) {
    ls[g] = uint8_t(std::min(63, nearestInt(invScale * scales[g])));
    lm[g] = uint8_t(std::min(63, nearestInt(invMin * mins[g])));
  }
  packScalesK4(ls, lm, packed);
  dOut = toHalf(maxScale / 63);
  dminOut = toHalf(maxMin / 63);
  const float d = fromHalf(dOut), dmin = fromHalf(dminOut);
  for (int g = 0; g < 8; g++) {
    const float dl = d * ls[g], ml = dmin * lm[g], inv = dl ? 1 / dl : 0;
    for (int l = 0; l < 32; l++) L[32 * g + l] = uint8_t(std::clamp(nearestInt((x[32 * g + l] + ml) * inv), 0, nmax));
  }
}

static void quantizeQ4_K(const float* x, BlockQ4_K& b) {
  uint8_t L[kQK];
  quantizeK45(x, 15, b.d, b.dmin, b.scales, L);
  for (int c = 0; c < 4; c++)
    for (int l = 0; l < 32; l++) b.qs[32 * c + l] = uint8_t(L[64 * c + l] | L[64 * c + 32 + l] << 4);
}

static void quantizeQ5_K(const float* x, BlockQ5_K& b) {
  uint8_t L[kQK];
  quantizeK45(x, 31, b.d, b.dmin, b.scales, L);
  std::fill(b.qh, b.qh + 32, 0);
  for (int c = 0; c < 4; c++)
    for (int l = 0; l < 32; l++) {
      const int lo = L[64 * c + l], hi = L[64 * c + 32 + l];
      b.qs[32 * c + l] = uint8_t((lo & 0xF) | (hi & 0xF) << 4);
      b.qh[l] |= uint8_t((lo >> 4) << (2 * c) | (hi >> 4) << (2 * c + 1));
    }
}

// Q6_K: per 16 elements a signed scale (weights x^2, as ggml), then the super-block's f16 d with
// int8 multiples, then levels in [-32, 31] against those.
static void quantizeQ6_K(const float* x, BlockQ6_K& b) {
  int8_t L[kQK];
  float scales[16], w[16];
  float maxScale = 0, maxAbs = 0;
  for (int s = 0; s < 16; s++) {
    for (int l = 0; l < 16; l++) w[l] = x[16 * s + l] * x[16 * s + l];
    scales[s] = fitSymmetric(16, 32, x + 16 * s, w, 9, L + 16 * s);
    if (std::fabs(scales[s]) > maxAbs) maxAbs = std::fabs(scales[s]), maxScale = scales[s];
  }
  std::fill(reinterpret_cast<uint8_t*>(&b), reinterpret_cast<uint8_t*>(&b) + sizeof(b), 0);
  if (maxAbs < 1e-15f) return;
  const float iscale = -128 / maxScale;
  b.d = toHalf(1 / iscale);
  const float d = fromHalf(b.d);
  for (int s = 0; s < 16; s++) {
    b.scales[s] = int8_t(std::min(127, nearestInt(iscale * scales[s])));
    const float ds = d * b.scales[s];
    for (int l = 0; l < 16; l++)
      L[16 * s + l] = int8_t(ds ? std::clamp(nearestInt(x[16 * s + l] / ds), -32, 31) + 32 : 32);
  }
  for (int n = 0; n < 2; n++)
    for (int l = 0; l < 32; l++) {
      const int e = 128 * n + l;
      const int q0 = L[e], q1 = L[e + 32], q2 = L[e + 64], q3 = L[e + 96];
      b.ql[64 * n + l] = uint8_t((q0 & 0xF) | (q2 & 0xF) << 4);
      b.ql[64 * n + 32 + l] = uint8_t((q1 & 0xF) | (q3 & 0xF) << 4);
      b.qh[32 * n + l] = uint8_t(q0 >> 4 | (q1 >> 4) << 2 | (q2 >> 4) << 4 | (q3 >> 4) << 6);
    }
}

void quantizeRow(DType type, const float* src, void* dst, int64_t n) {
  const int64_t be = blockElems(type), nb = n / be;
  uint8_t* p = static_cast<uint8_t*>(dst);
  for (int64_t i = 0; i < nb; i++) {
    const float* x = src + i * be;
    uint8_t* blk = p + i * blockBytes(type);
    switch (type) {
      case DType::Q8_0: {
        auto& b = *reinterpret_cast<BlockQ8_0*>(blk);
        b.d = toHalf(quantizeQ8_0Block(x, b.qs));
        break;
      }
      case DType::Q4_0: quantizeQ4_0(x, *reinterpret_cast<BlockQ4_0*>(blk)); break;
      case DType::Q4_K: quantizeQ4_K(x, *reinterpret_cast<BlockQ4_K*>(blk)); break;
      case DType::Q5_K: quantizeQ5_K(x, *reinterpret_cast<BlockQ5_K*>(blk)); break;
      case DType::Q6_K: quantizeQ6_K(x, *reinterpret_cast<BlockQ6_K*>(blk)); break;
      default: throw WeftError(Err::UnsupportedDtype, std::string(dtypeName(type)) + " is not a block type");
    }
  }
}

void quantizeRows(DType type, const float* src, void* dst, int64_t rows, int64_t cols, int threads) {
  const uint64_t rb = rowBytes(type, cols);
  auto work = [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; r++) quantizeRow(type, src + r * cols, static_cast<uint8_t*>(dst) + r * rb, cols);
  };
  threads = int(std::clamp<int64_t>(std::min<int64_t>(threads, rows * cols / (1 << 16)), 1, 256));
  if (threads == 1) return work(0, rows);
  std::vector<std::thread> pool;
  for (int i = 0; i < threads; i++) pool.emplace_back(work, rows * i / threads, rows * (i + 1) / threads);
  for (auto& t : pool) t.join();
}

// ---- activations ----

void quantizeActivations(DType weight, const float* X, int64_t T, int64_t ldx, int64_t K, QuantizedActs& a) {
  a.superBlocks = weight != DType::Q8_0 && weight != DType::Q4_0;
  a.T = T;
  a.K = K;
  a.ldq = (K + 63) / 64 * 64;
  a.ldd = a.ldq / 32;
  if (a.qs.size() < size_t(T * a.ldq)) a.qs.resize(T * a.ldq);
  if (a.d.size() < size_t(T * a.ldd)) a.d.resize(T * a.ldd);
  if (!a.superBlocks && a.negSum32.size() < size_t(T * a.ldd)) a.negSum32.resize(T * a.ldd);
  if (a.superBlocks && a.bsum16.size() < size_t(T * K / 16)) {
    a.bsum16.resize(T * K / 16);
    a.bsum32.resize(T * K / 32);
  }
  for (int64_t t = 0; t < T; t++) {
    const float* x = X + t * ldx;
    int8_t* q = a.qs.data() + t * a.ldq;
    float* d = a.d.data() + t * a.ldd;
    std::fill(q + K, q + a.ldq, 0);
    std::fill(d + K / (a.superBlocks ? kQK : 32), d + a.ldd, 0.0f);
    if (!a.superBlocks) {
      int32_t* negSums = a.negSum32.data() + t * a.ldd;
      std::fill(negSums, negSums + a.ldd, 0);
      for (int64_t b = 0; b < K / 32; b++) {
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
        // quantizeQ8_0Acts (the clamp never binds: |x| id <= 127)
        const float amax = maxAbs(x + 32 * b, 32);
        negSums[b] = -roundBlock32(x + 32 * b, amax != 0 ? 127.f / amax : 0, q + 32 * b);
        d[b] = fromHalf(toHalf(amax / 127.f));
#else
        d[b] = quantizeQ8_0Acts(x + 32 * b, q + 32 * b);
        for (int j = 0; j < 32; j++) negSums[b] -= q[32 * b + j];
#endif
      }
      continue;
    }
    int16_t* s16 = a.bsum16.data() + t * (K / 16);
    int16_t* s32 = a.bsum32.data() + t * (K / 32);
    for (int64_t b = 0; b < K / kQK; b++) {
      const float* xb = x + kQK * b;
      int8_t* qb = q + kQK * b;
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
      const float amax = maxAbs(xb, kQK);
      const float iscale = amax ? 127 / amax : 0;
      d[b] = amax ? 1 / iscale : 0;
      for (int j = 0; j < kQK; j += 32) roundBlock32(xb + j, iscale, qb + j);
#else
      float amax = 0;
      for (int j = 0; j < kQK; j++) amax = std::max(amax, std::fabs(xb[j]));
      const float iscale = amax ? 127 / amax : 0;
      d[b] = amax ? 1 / iscale : 0;
      for (int j = 0; j < kQK; j++) qb[j] = int8_t(std::clamp(nearestInt(xb[j] * iscale), -127, 127));
#endif
      for (int j = 0; j < kQK / 16; j++) {
        int s = 0;
        for (int l = 0; l < 16; l++) s += qb[16 * j + l];
        s16[16 * b + j] = int16_t(s);
      }
      for (int j = 0; j < kQK / 32; j++) s32[8 * b + j] = int16_t(s16[16 * b + 2 * j] + s16[16 * b + 2 * j + 1]);
    }
  }
}

}  // namespace weft::cpu

namespace weft {
float quantElement(const void* p, DType d, size_t i) {
  float tmp[cpu::kQK];
  const size_t be = size_t(blockElems(d));
  cpu::dequantizeRow(d, static_cast<const uint8_t*>(p) + (i / be) * blockBytes(d), tmp, int64_t(be));
  return tmp[i % be];
}
}  // namespace weft
