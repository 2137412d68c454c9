// The CUDA backend: weights uploaded once and shared by every context; KV pages in device
// memory; per context a stream, a cuBLAS handle, a preallocated workspace, pinned staging buffers
// and CUDA graphs of the decode step at the common batch sizes.
#pragma once
#include <atomic>
#include <map>
#include <vector>

#include "../engine.h"
#include "common.cuh"
#include "kernels.h"

namespace weft::cuda {

// A weight matrix on the device: bf16/f16, or FP8 E4M3 with one f32 scale per row (`scale` set).
struct DeviceMatrix {
  DeviceBuffer w, scale;
  int64_t rows = 0, cols = 0;
  bool fp8() const { return scale.ptr != nullptr; }
  uint64_t bytes() const { return w.bytes + scale.bytes; }
};

struct DeviceLayer {
  DeviceMatrix qkv, o, gateUp, down;  // (q|k|v rows, hidden), (hidden, q), (gate|up rows, hidden), (hidden, ffn)
  DeviceBuffer inputNorm, postNorm;   // f32
  DeviceBuffer qkvBias;               // f32, empty when the model has no attention bias
};

struct DeviceWeights {
  bool bf16 = false;                   // activation/weight dtype on the device: bf16, else f16
  bool fp8 = false;                    // the layers' matrices are FP8 E4M3 (DeviceMatrix::scale)
  uint64_t maxMatrixElems = 0;         // largest layer matrix (the FP8 dequantization workspace)
  DeviceBuffer embed, lmHead, finalNorm, invFreq;
  const void* lmHeadPtr = nullptr;     // embed's buffer when the embeddings are tied
  std::vector<DeviceLayer> layers;
  uint64_t bytes = 0;
};

class CudaBackend;

class CudaContext : public ExecContext {
 public:
  CudaContext(CudaBackend& backend, const Model& model, const EngineOptions& opt, KvPool& kv);
  ~CudaContext() override;
  void beforeStep() override;
  void forward(const Model& model, KvPool& kv, std::vector<StepEntry>& entries, std::vector<StepOutput>& out) override;
  void sampleRows(std::vector<StepEntry>& entries, const std::vector<int>& rowOf, int vocab, std::vector<StepOutput>& out) override;

 private:
  // shareGpu: another context is running a step, so a prefill keeps to part of the SMs
  void enqueueForward(const StepIndex& ix, int T, int R, int numTiles, int tileTokens, bool anySplit, bool anyMulti, bool shareGpu);
  // The packed step index in device memory for these counts: tok, pos, tokPages (nT), rowToken (nR),
  // tile first/count/slot (nTiles), then the page lists; the sampler rows follow on the host side.
  StepIndex indexFor(int nT, int nR, int nTiles) const;
  void gemm(const void* W, const void* X, float* Y, int N, int T, int K, float beta);
  void gemm(const DeviceMatrix& W, const void* X, float* Y, float beta);
  void enqueueFault();  // the injected fault, if any, at the start of a step
  void captureGraphsOnce();
  void init(const Model& model, const EngineOptions& opt, KvPool& kv);
  void release();  // frees what init made (also after a failed init)
  void captureGraphs();
  void ensurePenaltyCapacity(size_t n);

 public:
  bool drained() override;
  bool usesPdl() const override { return pdl_; }
  void injectFault(const std::string& kind) override;
  void releaseFault() override;

 private:
  bool pdl_ = false;              // programmatic dependent launch in this context's forward passes
  int64_t watchdogNs_ = 0;        // a step's GPU work longer than this: WEFT_DEVICE_TIMEOUT
  cudaStream_t stuckStream_ = nullptr;  // the stream of a step that timed out, until it drains
  std::string fault_;             // injected fault for the next step
  PinnedBuffer hangFlag_;         // mapped host memory a "hang" kernel spins on
  DeviceBuffer wscratch_;         // FP8: a layer matrix dequantized for cuBLAS (steps over kGemvMaxTokens rows)

  CudaBackend& be_;
  const Model& model_;
  const EngineOptions opt_;
  KvLayout kvl_{};
  bool mma_ = false;  // tensor-core attention for multi-token tiles
  int qkvDim_ = 0, maxTileTokens_ = 1, maxTokens_ = 0, maxRows_ = 0, pageCap_ = 0, scratchPage_ = 0;
  int curT_ = 0;  // tokens of the forward pass being enqueued (gemm of a layer matrix)
  cudaStream_t stream_ = nullptr;        // the stream of the step in flight: one of the two below
  cudaStream_t decodeStream_ = nullptr;  // highest priority: decode-only steps (and their graphs)
  cudaStream_t prefillStream_ = nullptr; // lowest priority: steps with prompt tokens
  cublasHandle_t blas_ = nullptr;
  cudaEvent_t done_ = nullptr;
  DeviceBuffer blasWorkspace_;
  // workspace (T = maxBatchTokens, R = maxLogitRows)
  DeviceBuffer x_;        // (T, hidden) f32 residual stream
  DeviceBuffer xb_;       // (max(T, R), hidden) normed activations
  DeviceBuffer qkv_;      // (T, q + 2 kv) f32
  DeviceBuffer att_;      // (T, q) attention output
  DeviceBuffer gateUp_;   // (T, 2 ffn) f32
  DeviceBuffer h_;        // (T, ffn) SwiGLU output
  DeviceBuffer cos_, sin_;  // (T, headDim / 2)
  DeviceBuffer logits_;   // (R, vocab) f32
  DeviceBuffer probs_;    // (R, vocab) f32 sampler scratch
  DeviceBuffer partial_;  // (maxBatchSequences, heads, kAttentionSplits, headDim + 2) split-attention partials
  // step index: built in hostIndex_ (fixed segments), packed into hostPacked_ and uploaded to index_
  // with one copy; a graph of batch size b reads indexFor(b, b, b), so its pointers stay valid
  DeviceBuffer index_;
  PinnedBuffer hostIndex_, hostPacked_;
  size_t segTok_ = 0, segPos_ = 0, segTokPages_ = 0, segPageIdx_ = 0, segRowToken_ = 0, segTile0_ = 0, segTileN_ = 0, segTileSlot_ = 0;
  // sampling
  DeviceBuffer penalties_, penaltyOrig_, out_;   // out_: (token, logprob bits) per sampled row
  PinnedBuffer hostSampleRows_, hostPenalties_, hostOut_, hostLogits_;
  size_t penaltyCap_ = 0;
  std::vector<int2> penaltyList_;
  std::vector<float> topScratch_;   // host scratch for top-n log-probabilities
  std::vector<int32_t> topIds_;
  std::vector<int> sampleSlot_;  // per entry: its sampler row, or -1
  std::vector<int> logitRowOf_;  // per entry: first logits row
  std::map<int, cudaGraphExec_t> graphs_;  // decode batch size -> graph
};

class CudaBackend : public Backend {
 public:
  CudaBackend(const Model& model, const EngineOptions& opt);
  ~CudaBackend() override;
  const char* name() const override { return "cuda"; }
  uint64_t kvBudget(uint64_t requested) override;
  bool kvInHostMemory() const override { return false; }
  void attachKv(KvPool& kv) override;
  std::unique_ptr<ExecContext> makeContext(const Model& model, const EngineOptions& opt, KvPool& kv) override;
  HostBuffer parkPages(KvPool& kv, const std::vector<int>& pages) override;
  void restorePages(KvPool& kv, const std::vector<int>& pages, const HostBuffer& from) override;
  std::string deviceName() const override { return deviceName_; }
  uint64_t deviceWeightBytes() const override { return weights.bytes; }
  bool lost() const override { return stickyError() != cudaSuccess; }
  const char* weightFormat() const override { return weights.fp8 ? "fp8" : "source"; }

  int device = 0;
  DeviceWeights weights;
  DeviceBuffer kvMemory;   // numPages + 1 pages (the last is scratch for padded graph steps)
  int smCount = 0;
  std::atomic<int> stepsInFlight{0};        // across contexts
  std::atomic<int64_t> lastDecodeNs{0};     // steady-clock time a decode step last started or ended
  bool leakOnDestroy = false;               // a context was released with its stream stuck: freeing would wait for it
  cudaStream_t transfer = nullptr;
  cudaEvent_t transferDone = nullptr;

 private:
  void reapTransfers();
  uint64_t contextBytes(const EngineOptions& opt) const;
  const Model& model_;
  const EngineOptions opt_;
  std::string deviceName_;
  std::vector<std::pair<cudaEvent_t, HostBuffer>> pendingTransfers_;  // pinned buffers kept until their copy is done
  void keepUntilDone(const HostBuffer& b);
};

// Decode-step batch sizes with a captured graph (a step of n sequences runs the next size up).
extern const int kGraphBatchSizes[9];

}  // namespace weft::cuda
