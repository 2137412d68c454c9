// CUDA kernels of the forward pass and the sampler; each launcher enqueues on `stream`.
// `bf16` selects the activation/weight dtype (bf16 or f16); `kvF16` the KV page dtype (f16 or f32).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace weft::cuda {

// Where a step's tokens are: uploaded once per step into device memory.
struct StepIndex {
  const int* tok;        // (T) token ids
  const int* pos;        // (T) positions
  const int* tokPages;   // (T) offset into pageIdx of the token's sequence page list
  const int* pageIdx;    // page lists of the step's sequences, concatenated
  const int* rowToken;   // (R) token whose hidden state each logits row takes
  const int* tileTok0;   // (tiles) first token of each attention tile (consecutive tokens of one sequence)
  const int* tileCount;  // (tiles) tokens in the tile
  const int* tileSlot;   // (tiles) split-partial slot of a single-token tile, -1 for longer tiles
};

// Blocks a single-token (decode) tile's attention is split over; partials per slot:
// numHeads x kAttentionSplits x (headDim + 2) floats.
constexpr int kAttentionSplits = 16;

// KV pages: base + page * pageBytes + ((layer * 2 + k|v) * kvHeads + head) * blockBytes + slot * headDim.
struct KvLayout {
  uint8_t* base;
  uint64_t pageBytes, blockBytes;
  int pageTokens, kvHeads, headDim;
  bool f16;
};

void ropeTable(const int* pos, const float* invFreq, float* cosv, float* sinv, int T, int half, cudaStream_t s);
void embed(const int* tok, const void* table, float* x, int T, int H, bool bf16, cudaStream_t s);
// out[r] = rmsnorm(x[rows ? rows[r] : r]) * w, converted to the activation dtype.
void rmsnorm(const float* x, const int* rows, const float* w, void* out, int R, int H, float eps, bool bf16, cudaStream_t s);
// Adds biases, rotates q and k (rotate_half pairing), writes q back into qkv and k, v into the pages.
void ropeStoreKv(float* qkv, const float* bias, const float* cosv, const float* sinv, const StepIndex& ix,
                 const KvLayout& kv, int layer, int T, int numHeads, cudaStream_t s);
// Causal attention of every token's query heads over its sequence's pages, tile by tile.
// Returns the dynamic shared memory it needs for `tileTokens` (for the launch attribute).
size_t attentionSmem(int tileTokens, int group, int headDim);
// anySplit: some tile is a single token (split over kAttentionSplits blocks); maxBlocks > 0 caps the
// grid (the blocks then loop over the tiles).
void attention(const float* qkv, int qkvDim, const KvLayout& kv, int layer, const StepIndex& ix, int numTiles,
               int tileTokens, int numHeads, void* out, bool bf16, float* partial, bool anySplit, bool splitOnly, int maxBlocks,
               cudaStream_t s);
void setAttentionSmemLimit(size_t bytes);
// Tensor-core attention for the tiles of more than one token (attention_mma.cu): f16 KV pages,
// head dimension 64 or 128, tiles of attentionMmaTileTokens() tokens. attention() then runs with
// splitOnly for the single-token tiles.
bool attentionMmaSupported(const KvLayout& kv, int numHeads);
int attentionMmaTileTokens(int numHeads, int kvHeads);
void attentionMma(const float* qkv, int qkvDim, const KvLayout& kv, int layer, const StepIndex& ix, int numTiles, int numHeads,
                  void* out, bool bf16, cudaStream_t s);
// Y[t, n] (f32) = X[t, :] . W[n, :] (+ Y) for T <= kGemvMaxTokens (K a multiple of 8): the decode GEMV.
constexpr int kGemvMaxTokens = 8;
void gemv(const void* w, const void* x, float* y, int N, int T, int K, bool accumulate, bool bf16, cudaStream_t s);
// FP8 E4M3 weights with one f32 scale per row: Y[t, n] = scale[n] * X[t, :] . W8[n, :] (+ Y), K a
// multiple of 16, T <= kGemvMaxTokens.
void gemvFp8(const uint8_t* w, const float* scale, const void* x, float* y, int N, int T, int K, bool accumulate, bool bf16, cudaStream_t s);
// out[n, k] (bf16/f16) = W8[n, k] * scale[n] (K a multiple of 16): the larger GEMMs dequantize a
// matrix into the context's workspace and run on cuBLAS.
void dequantFp8(const uint8_t* w, const float* scale, void* out, int64_t N, int K, bool bf16, cudaStream_t s);
// At load: scale[n] = max_k |w[n, k]| / 448 (1 for a zero row), W8 = E4M3(w / scale), saturating.
void quantizeFp8(const void* w, uint8_t* w8, float* scale, int64_t N, int K, bool bf16, cudaStream_t s);
// Fault injection (test:cuda, WEFT_FAULT_INJECTION=1): a kernel spinning until *hostFlag (pinned,
// mapped) is non-zero or limitSeconds pass; a kernel that traps; a launch the runtime refuses
// (returns its error: cudaErrorInvalidConfiguration).
void faultHang(const int* hostFlag, double limitSeconds, cudaStream_t s);
void faultTrap(cudaStream_t s);
cudaError_t faultBadLaunch(cudaStream_t s);
// h[t, i] = silu(gu[t, i]) * gu[t, F + i]
void siluMul(const float* gu, void* h, int T, int F, bool bf16, cudaStream_t s);

// Sampling, one block per sampled row.
struct SampleRow {
  int logitRow;
  int topK;
  float temperature, topP, minP, repetition, presence, frequency;
  int penaltyOffset, penaltyCount;  // into the penalty list: (token, count << 1 | in history)
  unsigned long long seed, draw;
};
// out: (token, logprob as float bits) per row
void sample(float* logits, float* probs, int V, const SampleRow* rows, int numRows, const int2* penalties,
            float* penaltyOrig, int* out, cudaStream_t s);

}  // namespace weft::cuda
