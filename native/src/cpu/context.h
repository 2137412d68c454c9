// The CPU backend: contexts with a thread pool each, KV pages in host memory.
#pragma once
#include "../engine.h"

namespace weft {

class CpuContext : public ExecContext {
 public:
  CpuContext(const Model& model, const EngineOptions& opt);
  ThreadPool& pool() { return pool_; }

  // One forward pass over `entries` (KV pages already allocated), writing requested logits/samples.
  void forward(const Model& model, KvPool& kv, std::vector<StepEntry>& entries, std::vector<StepOutput>& out) override;
  // Samples entry i from logits row rowOf[i] (skipped when -1), in parallel across entries.
  void sampleRows(std::vector<StepEntry>& entries, const std::vector<int>& rowOf, int vocab, std::vector<StepOutput>& out) override;

 private:
  const EngineOptions opt_;
  ThreadPool pool_;
  // Workspace, preallocated for maxBatchTokens (T) and maxLogitRows (R): no allocation per step.
  std::vector<float> x_, xb_;        // (T, hidden) residual stream, normed input
  std::vector<float> q_, k_, v_;     // (T, heads*headDim), (T, kvHeads*headDim) x2
  std::vector<float> att_;           // (T, heads*headDim)
  std::vector<float> gate_, up_;     // (T, ffn)
  std::vector<float> cos_, sin_;     // (T, rotaryDim/2) RoPE angles of the global table
  std::vector<float> cosLocal_, sinLocal_;  // (T, rotaryDim/2) sliding layers' own table (Gemma 3), when set
  const std::vector<double>* invFreq_ = nullptr;  // the global table: LongRoPE's long one past its original context
  std::vector<float> logitIn_;       // (R, hidden)
  std::vector<float> logits_;        // (R, vocab)
  std::vector<int32_t> tok_, pos_, seqOf_;  // (T)
  std::vector<int32_t> rowToken_;    // (R) which token each logits row comes from
  std::vector<std::vector<float>> scores_;         // per thread: attention scores
  std::vector<SamplerScratch> samplerScratch_;     // per thread
  std::vector<std::vector<const uint8_t*>> pageK_, pageV_;  // per thread page-base lists
  std::vector<std::vector<const uint8_t*>> posK_, posV_;    // per thread: one pointer per position (windows)

  // Attention of every (token, KV head) of the step over its sequence's cached positions.
  void attend(const Model& model, KvPool& kv, const std::vector<StepEntry>& entries, int layer, int64_t T);
};

}  // namespace weft
