// Building blocks of the quantized dot products (quant_gemm.cpp): the weights of one 32-element
// group of a block as 32 bytes in a ymm register (built with AVX2 whatever the path), and vector
// traits that consume G groups per register: V256 (AVX2, AVX-VNNI or AVX-512VL+VNNI encodings,
// G = 1) and V512 (AVX-512BW, with VNNI where compiled in, G = 2). V512 joins two AVX2-built groups
// into a zmm, so the layout code is the one exercised on AVX2; Emu512 (WEFT_QUANT_EMU512) runs
// the G = 2 kernels on AVX2 to test them on machines without AVX-512.
#pragma once
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define WEFT_QSIMD 1
#include <immintrin.h>

#include "quant.h"

namespace weft::cpu::qsimd {

inline float halfToFloat(uint16_t h) { return _cvtsh_ss(h); }  // exact, like f16ToF32
inline __m256i load32(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }
inline __m256i lowNibbles(__m256i q) { return _mm256_and_si256(q, _mm256_set1_epi8(0x0F)); }
inline __m256i highNibbles(__m256i q) { return _mm256_and_si256(_mm256_srli_epi16(q, 4), _mm256_set1_epi8(0x0F)); }
// bits [shift, shift + width) of every byte, moved to bits 4.. (the levels' high part)
inline __m256i highBits(__m256i h, int shift, int mask) {
  h = _mm256_and_si256(_mm256_srl_epi16(h, _mm_cvtsi32_si128(shift)), _mm256_set1_epi8(char(mask)));
  return _mm256_slli_epi16(h, 4);
}

// unpackScalesK4 in a register: bytes 0..7 the scales, 8..15 the mins. Reads 16 bytes at q (the
// 12 packed bytes and 4 of the levels that follow them in the block).
inline __m128i unpackScalesK4Simd(const uint8_t* q) {
  const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q));
  // low 6 bits (j < 4) or low 4 bits (j >= 4: of q[j + 4], high nibble for the mins)
  const __m128i low = _mm_shuffle_epi8(v, _mm_setr_epi8(0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 8, 9, 10, 11));
  const __m128i lowBits = _mm_and_si128(_mm_srlv_epi32(low, _mm_setr_epi32(0, 0, 0, 4)),
                                        _mm_setr_epi8(63, 63, 63, 63, 15, 15, 15, 15, 63, 63, 63, 63, 15, 15, 15, 15));
  // j >= 4: the top two bits of q[j - 4] (scales) or q[j] (mins) as bits 4..5
  const __m128i top = _mm_shuffle_epi8(v, _mm_setr_epi8(-1, -1, -1, -1, 0, 1, 2, 3, -1, -1, -1, -1, 4, 5, 6, 7));
  return _mm_or_si128(lowBits, _mm_srli_epi16(_mm_and_si128(top, _mm_set1_epi8(char(0xC0))), 2));
}

// ---- group g's weights (unsigned levels for the K-quants, signed values for Q8_0/Q4_0) ----
inline __m256i groupQ4K(const uint8_t* qs, int g) {
  const __m256i q = load32(qs + 32 * (g >> 1));
  return g & 1 ? highNibbles(q) : lowNibbles(q);
}
inline __m256i groupQ5K(const uint8_t* qs, const uint8_t* qh, int g) {
  return _mm256_or_si256(groupQ4K(qs, g), highBits(load32(qh), g, 1));
}
inline __m256i groupQ6K(const uint8_t* ql, const uint8_t* qh, int g) {
  const int n = g >> 2, k = g & 3;
  const __m256i q = load32(ql + 64 * n + 32 * (k & 1));
  return _mm256_or_si256(k < 2 ? lowNibbles(q) : highNibbles(q), highBits(load32(qh + 32 * n), 2 * k, 3));
}
// Q4_0's nibbles unshifted (0..15): the kernel takes 8 x the block's activation sum off instead
inline __m256i blockQ4_0(const BlockQ4_0& b) {
  const __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b.qs));
  return lowNibbles(_mm256_set_m128i(_mm_srli_epi16(q, 4), q));
}

// ---- group g's int16 scale per lane (a lane holds the sum of two adjacent products) ----
// Q4_K/Q5_K: s16 = the eight 6-bit scales widened to int16 in both halves
inline __m256i scalesK4(__m128i scalesMins) { return _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(scalesMins)); }
inline __m256i scaleK4(__m256i s16, int g) { return _mm256_shuffle_epi8(s16, _mm256_set1_epi16(short(0x0100 + 0x0202 * g))); }
// Q6_K: elements 0..15 of group g use scales[2g], 16..31 scales[2g + 1]
inline __m256i scaleQ6K(__m128i sc8, int g) {
  const __m128i idx = _mm_set_epi64x(0x0101010101010101LL * (2 * g + 1), 0x0101010101010101LL * (2 * g));
  return _mm256_cvtepi8_epi16(_mm_shuffle_epi8(sc8, idx));
}

// sum of 8 mins (u8) x 8 sums of 32 quants; sum of 16 scales (s8) x 16 sums of 16 quants
inline int32_t hsum4(__m128i s) {
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
  return _mm_cvtsi128_si32(s);
}
inline int32_t dotMins(__m128i scalesMins, const int16_t* bsum32) {
  const __m128i m = _mm_cvtepu8_epi16(_mm_srli_si128(scalesMins, 8));
  return hsum4(_mm_madd_epi16(m, _mm_loadu_si128(reinterpret_cast<const __m128i*>(bsum32))));
}
inline int32_t dotScales16(__m128i sc8, const int16_t* bsum16) {
  const __m256i p = _mm256_madd_epi16(_mm256_cvtepi8_epi16(sc8), load32(bsum16));
  return hsum4(_mm_add_epi32(_mm256_castsi256_si128(p), _mm256_extracti128_si256(p, 1)));
}

// ---- vector traits ----
// dotU8S8: acc + sums of 4 adjacent u8 x s8 products per int32 lane. dotScaled: acc + s16 x (sums
// of 2 adjacent u8 x s8 products) per int32 lane. The int16 pair sums cannot saturate here
// (|u| <= 128 with |s| <= 127 for Q8_0/Q4_0, u <= 63 for the K-quants), so every path computes
// the same integers.
struct V256 {
  static constexpr int G = 1;
  using I = __m256i;
  using F = __m256;
  static I join(const __m256i* g) { return g[0]; }
  static I loadX(const int8_t* p) { return load32(p); }
  static I zero() { return _mm256_setzero_si256(); }
  static F zeroF() { return _mm256_setzero_ps(); }
  static I dotU8S8(I acc, I u, I s) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_dpbusd_epi32(acc, u, s);
#elif defined(__AVXVNNI__)
    return _mm256_dpbusd_avx_epi32(acc, u, s);
#else
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)));
#endif
  }
  static I dotScaled(I acc, I u, I s, I s16) {
    const I p = _mm256_maddubs_epi16(u, s);
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_dpwssd_epi32(acc, p, s16);
#elif defined(__AVXVNNI__)
    return _mm256_dpwssd_avx_epi32(acc, p, s16);
#else
    return _mm256_add_epi32(acc, _mm256_madd_epi16(p, s16));
#endif
  }
  static I absW(I w) { return _mm256_sign_epi8(w, w); }
  static I signX(I x, I w) { return _mm256_sign_epi8(x, w); }  // x * sign(w)
  static F cvt(I a) { return _mm256_cvtepi32_ps(a); }
  static F fma(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
  static F mul(F a, F b) { return _mm256_mul_ps(a, b); }
  static F scales(const float* s) { return _mm256_set1_ps(s[0]); }
  static I bcast(const int32_t* s) { return _mm256_set1_epi32(s[0]); }  // s[g] to group g's lanes
  static int32_t hsum(I a) { return hsum4(_mm_add_epi32(_mm256_castsi256_si128(a), _mm256_extracti128_si256(a, 1))); }
  static float hsumF(F a) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
};

#if defined(__AVX512BW__)
struct V512 {
  static constexpr int G = 2;
  using I = __m512i;
  using F = __m512;
  static I join(const __m256i* g) { return _mm512_inserti64x4(_mm512_castsi256_si512(g[0]), g[1], 1); }
  static I loadX(const int8_t* p) { return _mm512_loadu_si512(p); }
  static I zero() { return _mm512_setzero_si512(); }
  static F zeroF() { return _mm512_setzero_ps(); }
  static I dotU8S8(I acc, I u, I s) {
#if defined(__AVX512VNNI__)
    return _mm512_dpbusd_epi32(acc, u, s);
#else
    return _mm512_add_epi32(acc, _mm512_madd_epi16(_mm512_maddubs_epi16(u, s), _mm512_set1_epi16(1)));
#endif
  }
  static I dotScaled(I acc, I u, I s, I s16) {
    const I p = _mm512_maddubs_epi16(u, s);
#if defined(__AVX512VNNI__)
    return _mm512_dpwssd_epi32(acc, p, s16);
#else
    return _mm512_add_epi32(acc, _mm512_madd_epi16(p, s16));
#endif
  }
  static I absW(I w) { return _mm512_abs_epi8(w); }
  // AVX-512 has no vpsignb: negate x where w < 0 (where w == 0, |w| = 0 zeroes the product)
  static I signX(I x, I w) { return _mm512_mask_sub_epi8(x, _mm512_movepi8_mask(w), _mm512_setzero_si512(), x); }
  static F cvt(I a) { return _mm512_cvtepi32_ps(a); }
  static F fma(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
  static F mul(F a, F b) { return _mm512_mul_ps(a, b); }
  static F scales(const float* s) {
    const __m512d lo = _mm512_castpd256_pd512(_mm256_castps_pd(_mm256_set1_ps(s[0])));
    return _mm512_castpd_ps(_mm512_insertf64x4(lo, _mm256_castps_pd(_mm256_set1_ps(s[1])), 1));
  }
  static I bcast(const int32_t* s) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set1_epi32(s[0])), _mm256_set1_epi32(s[1]), 1);
  }
  static int32_t hsum(I a) { return _mm512_reduce_add_epi32(a); }
  static float hsumF(F a) { return _mm512_reduce_add_ps(a); }
};
#endif

#if defined(WEFT_QUANT_EMU512)
// V512's semantics on two ymm halves (lower group first), for testing the G = 2 kernels on AVX2.
struct Emu512 {
  static constexpr int G = 2;
  struct I { __m256i lo, hi; };
  struct F { __m256 lo, hi; };
  static I join(const __m256i* g) { return {g[0], g[1]}; }
  static I loadX(const int8_t* p) { return {load32(p), load32(p + 32)}; }
  static I zero() { return {V256::zero(), V256::zero()}; }
  static F zeroF() { return {V256::zeroF(), V256::zeroF()}; }
  static I dotU8S8(I acc, I u, I s) { return {V256::dotU8S8(acc.lo, u.lo, s.lo), V256::dotU8S8(acc.hi, u.hi, s.hi)}; }
  static I dotScaled(I acc, I u, I s, I c) {
    return {V256::dotScaled(acc.lo, u.lo, s.lo, c.lo), V256::dotScaled(acc.hi, u.hi, s.hi, c.hi)};
  }
  static I absW(I w) { return {V256::absW(w.lo), V256::absW(w.hi)}; }
  static I signX(I x, I w) { return {V256::signX(x.lo, w.lo), V256::signX(x.hi, w.hi)}; }
  static F cvt(I a) { return {V256::cvt(a.lo), V256::cvt(a.hi)}; }
  static F fma(F a, F b, F c) { return {V256::fma(a.lo, b.lo, c.lo), V256::fma(a.hi, b.hi, c.hi)}; }
  static F mul(F a, F b) { return {V256::mul(a.lo, b.lo), V256::mul(a.hi, b.hi)}; }
  static F scales(const float* s) { return {_mm256_set1_ps(s[0]), _mm256_set1_ps(s[1])}; }
  static I bcast(const int32_t* s) { return {_mm256_set1_epi32(s[0]), _mm256_set1_epi32(s[1])}; }
  static int32_t hsum(I a) { return V256::hsum(a.lo) + V256::hsum(a.hi); }
  static float hsumF(F a) { return V256::hsumF(_mm256_add_ps(a.lo, a.hi)); }
};
#endif

}  // namespace weft::cpu::qsimd
#endif
