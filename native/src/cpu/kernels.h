// CPU kernels. Every kernel works on a slice of its output so callers can run several in one
// parallel region. Reductions run in a fixed order per output element, so a row's result never
// depends on how many rows are in the batch or how the work is split across threads.
#pragma once
#include <cstdint>
#include <vector>

#include "../common.h"

namespace weft::cpu {

// A row-major [rows, cols] weight matrix in the checkpoint's dtype (memory-mapped, read-only).
struct WeightView {
  const void* data = nullptr;
  DType dtype = DType::F32;
  int64_t rows = 0;  // output features (N)
  int64_t cols = 0;  // input features (K)
  // F8_E4M3 only (FP8 checkpoints, for the CUDA backend): element (r, c) is data[r, c] * rowScale[r].
  // The CPU backend never sees F8_E4M3 views: the model dequantizes them when it loads for the CPU.
  const float* rowScale = nullptr;
};

constexpr int64_t kPanelRows = 16;  // weight rows per unit of work (threads split at this grain)

// The quantized GEMM's free parameters (timed per machine by weft build: src/engine/tune.ts).
// None changes the order in which an output accumulates, so every setting gives the same bits.
struct KernelTuning {
  int gemvRows = 1;     // weight rows per pass when X has one row (decode of one sequence)
  int rowBlock = 4;     // Q8_0/Q4_0: rows of X per micro-kernel pass (at most 4)
  int colBlock = 2;     // Q8_0/Q4_0: weight rows per micro-kernel pass (at most 4)
  int rowBlockK = 8;    // K-quants: rows of X per pass (at most 8; AVX2 keeps 8 x 1 and 4 x 2 in registers)
  int colBlockK = 1;    // K-quants: weight rows per pass (at most 4)
  int panelRows = 16;   // weight rows that every row of X passes over while they are in cache
  int prefetch = 4096;  // weight bytes ahead of the current block to prefetch (0: none)
};
// The settings' names and ranges, for parsing (an unknown name or a value out of range is an error).
struct TuningKey {
  const char* name;
  int KernelTuning::*field;
  int min, max;
};
extern const TuningKey kTuningKeys[7];
// The few settings worth timing on a machine (the first is the default).
std::vector<KernelTuning> tuningCandidates();

// Y[t, n] = bias[n] + sum_k X[t, k] * W[n, k] (+ Y[t, n] when accumulate), for n in [n0, n1).
// A quantized W (ggml blocks) goes to quant.h's gemmQuant: X is quantized per block on the fly.
void gemm(const float* X, int64_t T, int64_t ldx, const WeightView& W, int64_t n0, int64_t n1,
          float* Y, int64_t ldy, const float* bias, bool accumulate, const KernelTuning& tuning = {});

// out[i] = x[i] / sqrt(mean(x^2) + eps) * w[i]
void rmsnorm(const float* x, const float* w, float eps, int64_t n, float* out);

// Rotates `numHeads` heads of `headDim` in place (Hugging Face rotate_half pairing: i, i + d/2).
void rope(float* x, int numHeads, int headDim, const float* cosv, const float* sinv);

// out[i] = silu(g[i]) * u[i]
void siluMul(const float* g, const float* u, int64_t n, float* out);

// Embedding row gather + conversion to f32 (dequantization for block types).
void loadRow(const WeightView& W, int64_t row, float* out);

// Stores/loads n floats to/from KV storage in f32 or f16.
void storeKv(const float* src, void* dst, DType dtype, int64_t n);

// Attention of `groupHeads` query heads (sharing one KV head) over numPos cached positions.
// keys(j)/values(j) point at position j's head vector in the KV pages.
struct KvAccessor {
  const uint8_t* const* pageBase;  // per page of the sequence: start of this (layer, kv head) K block
  const uint8_t* const* pageBaseV;
  int64_t pageTokens;
  int64_t headDim;
  DType dtype;
};
void attendGroup(const float* q, int groupHeads, const KvAccessor& kv, int64_t numPos, float scale,
                 float* out, float* scores);

}  // namespace weft::cpu
