// ggml's block formats (GGUF): exact block layouts, a scalar (de)quantizer per type, the
// activation quantizers (Q8_0 blocks for Q8_0/Q4_0 weights, Q8_K for the K-quants) and the GEMM
// over quantized weights that kernels.cpp's gemm() hands quantized matrices to.
#pragma once
#include <cstdint>
#include <vector>

#include "../common.h"
#include "kernels.h"

namespace weft::cpu {

// ---- ggml's blocks, byte for byte (f16 fields as raw bits) ----
constexpr int kQK = 256;  // elements of a K-quant super-block

struct BlockQ8_0 {
  uint16_t d;
  int8_t qs[32];
};
struct BlockQ4_0 {
  uint16_t d;
  uint8_t qs[16];  // element j: low nibble of qs[j]; element j + 16: high nibble (both - 8)
};
struct BlockQ4_K {
  uint16_t d, dmin;
  uint8_t scales[12];  // 8 six-bit scales and 8 six-bit mins (unpackScalesK4)
  uint8_t qs[128];     // 64-element chunk c: low nibbles of qs[32c..] then high nibbles
};
struct BlockQ5_K {
  uint16_t d, dmin;
  uint8_t scales[12];
  uint8_t qh[32];  // bit 2c (2c + 1) of qh[l]: fifth bit of element 64c + l (64c + 32 + l)
  uint8_t qs[128];
};
struct BlockQ6_K {
  uint8_t ql[128];   // low 4 bits
  uint8_t qh[64];    // high 2 bits
  int8_t scales[16]; // one per 16 elements
  uint16_t d;
};
static_assert(sizeof(BlockQ8_0) == 34 && sizeof(BlockQ4_0) == 18 && sizeof(BlockQ4_K) == 144 &&
              sizeof(BlockQ5_K) == 176 && sizeof(BlockQ6_K) == 210, "ggml block sizes");

// The 12 packed scale bytes of a Q4_K/Q5_K block as out[0..7] = scales, out[8..15] = mins
// (ggml's get_scale_min_k4 for all eight sub-blocks at once).
void unpackScalesK4(const uint8_t* packed, uint8_t out[16]);

// ---- whole rows (n a multiple of blockElems(type)) ----
void dequantizeRow(DType type, const void* src, float* dst, int64_t n);
void quantizeRow(DType type, const float* src, void* dst, int64_t n);
// `rows` rows of `cols`, split across `threads` threads (the GGUF writer's entry point)
void quantizeRows(DType type, const float* src, void* dst, int64_t rows, int64_t cols, int threads);

// ---- activations, quantized per block on the fly (as llama.cpp does) ----
// Q8_0 rows: 32-element blocks, d = f16(amax / 127). Q8_K rows: 256-element blocks, d = amax / 127
// in f32, plus the sums of each 16 and each 32 quants (for the K-quants' mins and offsets).
// Rows are zero-padded to 64 quants so a 512-bit kernel may read a pair of blocks at the end.
struct QuantizedActs {
  bool superBlocks = false;  // Q8_K (true) or Q8_0 (false)
  int64_t T = 0, K = 0;
  int64_t ldq = 0, ldd = 0;    // per row: quants (bytes), scales
  std::vector<int8_t> qs;      // [T, ldq]
  std::vector<float> d;        // [T, ldd]
  std::vector<int16_t> bsum16; // [T, K / 16] (Q8_K)
  std::vector<int16_t> bsum32; // [T, K / 32] (Q8_K)
  std::vector<int32_t> negSum32;  // [T, ldd] (Q8_0): minus each block's sum of quants (Q4_0's -8 offset)
};
// Quantizes T rows of X (row stride ldx, K columns) for weights of type `weight`.
void quantizeActivations(DType weight, const float* X, int64_t T, int64_t ldx, int64_t K, QuantizedActs& out);

// gemm() for a quantized W (same contract as kernels.h's gemm). `reference` runs the scalar
// dot products instead of the SIMD micro-kernels.
void gemmQuant(const float* X, int64_t T, int64_t ldx, const WeightView& W, int64_t n0, int64_t n1, float* Y,
               int64_t ldy, const float* bias, bool accumulate, bool reference = false, const KernelTuning& tuning = {});

// The SIMD path compiled in: "avx512-vnni", "avx512bw", "avx-vnni", "avx2" or "scalar".
const char* quantKernelName();

}  // namespace weft::cpu
