// The engine: one model (shared weights), one paged KV pool, the sequences that own KV pages,
// and a fixed set of execution contexts. Methods are called on the JS thread except
// Engine::execute, which runs a prepared step on a worker thread with the context it holds.
#pragma once
#include <atomic>
#include <map>
#include <set>
#include <memory>
#include <unordered_map>
#include <vector>

#include "common.h"
#include "cpu/kernels.h"
#include "kv_cache.h"
#include "model.h"
#include "sampler.h"
#include "thread_pool.h"

namespace weft {

enum class BackendKind { Cpu = 0, Cuda = 1 };

struct EngineOptions {
  BackendKind backend = BackendKind::Cpu;
  int cudaDevice = 0;
  int numContexts = 1;
  int numThreads = 1;         // per context
  int maxBatchTokens = 512;   // tokens in one step, per context
  int maxBatchSequences = 64; // sequences in one step
  int maxLogitRows = 64;      // rows of logits one step may return / sample from
  int maxContext = 0;         // 0: the model's max_position_embeddings
  uint64_t kvMemoryBytes = 256ull << 20;  // on CUDA: at most this, and what device memory allows
  int kvPageTokens = 16;
  DType kvDtype = DType::F32;
  // CUDA: the layers' matrices as FP8 E4M3 with one scale per output row (quantized on the device at
  // load, or as an FP8 checkpoint stores them); activations stay bf16/f16, the LM head and embeddings
  // keep the checkpoint's precision
  bool fp8Weights = false;
  // CPU kernel settings per kind of step (options.tuning: timed by weft build)
  cpu::KernelTuning tuneDecode1, tuneBatch, tunePrefill;
  // decode1 for a step of one token, batch up to 64 tokens, prefill above
  const cpu::KernelTuning& tuningFor(int64_t numTokens) const {
    return numTokens <= 1 ? tuneDecode1 : numTokens <= 64 ? tuneBatch : tunePrefill;
  }
};

// A sequence's life: Active (its KV in the pool) or Parked (its KV copied to host memory and
// its pages returned); `busy` while it is part of a step in flight.
struct Sequence {
  int64_t id = 0;
  std::atomic<int> numTokens{0};     // tokens whose KV is cached (read by sequenceInfo during a step)
  std::vector<int> pages;            // page table: position p is in pages[p / pageTokens]
  std::vector<int32_t> tokens;       // history (for penalties and truncation)
  SamplerState sampler;
  bool parked = false;
  HostBuffer parkedKv;               // host copy while parked (pinned memory on CUDA)
  bool busy = false;
};

enum class LogitsMode { None = 0, Last = 1, All = 2 };

struct StepEntry {
  Sequence* seq = nullptr;
  std::vector<int32_t> tokens;
  LogitsMode logits = LogitsMode::None;
  bool sample = false;
  int startPos = 0;       // filled by prepare
  int newPages = 0;       // pages allocated by prepare (released again if the step fails)
};

struct StepOutput {
  int64_t seq = 0;
  SampleResult sampled;
  bool hasSample = false;
  std::vector<float> logits;  // rows x vocab when requested
  int logitRows = 0;
};

}  // namespace weft

#include "backend.h"

namespace weft {

class Engine {
 public:
  Engine(std::unique_ptr<Model> model, const EngineOptions& opt);

  const Model& model() const { return *model_; }
  const EngineOptions& options() const { return opt_; }
  KvPool& kv() { return *kv_; }
  Backend& backend() { return *backend_; }
  int maxContext() const { return maxContext_; }
  int numContexts() const { return int(contexts_.size()); }
  int numBusyContexts() const;
  size_t numSequences() const { return seqs_.size(); }

  int64_t createSequence();
  Sequence& get(int64_t id);  // throws SequenceNotFound
  void freeSequence(int64_t id);
  void truncate(int64_t id, int numTokens);
  void park(int64_t id);
  void restore(int64_t id);
  void setSampling(int64_t id, const SamplingParams& p);

  // JS thread: validates and claims (context, sequences, KV pages); throws without side effects.
  void prepare(int ctx, std::vector<StepEntry>& entries);
  // Worker thread: runs the step, then commits the sequences' new tokens.
  void execute(int ctx, std::vector<StepEntry>& entries, std::vector<StepOutput>& out);
  // JS thread, after execute (ok or not): releases the claims; on failure returns the new pages.
  // `stuck` (the step failed with WEFT_DEVICE_TIMEOUT): the claims stay until the context drains.
  void finish(int ctx, std::vector<StepEntry>& entries, bool ok, bool stuck = false);
  // JS thread: releases the claims of timed-out steps whose context drained; whether `ctx` (or,
  // with -1, every context) is free of such a step now.
  bool reapStuck(int ctx = -1);
  bool contextUsesPdl() const { return !contexts_.empty() && contexts_[0]->usesPdl(); }
  void injectFault(int ctx, const std::string& kind);
  void releaseFault(int ctx);

 private:
  void releaseTail(Sequence& s, int keepTokens);
  std::unique_ptr<Model> model_;
  EngineOptions opt_;
  int maxContext_;
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<KvPool> kv_;
  std::vector<std::unique_ptr<ExecContext>> contexts_;
  std::map<int, std::vector<StepEntry>> stuck_;  // context -> the timed-out step's entries
  std::set<int64_t> freeWhenReaped_;              // sequences freed while their step was stuck
  std::unordered_map<int64_t, std::unique_ptr<Sequence>> seqs_;
  int64_t nextId_ = 1;
};

}  // namespace weft
