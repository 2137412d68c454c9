// The interface between the engine and a compute backend (one folder each: cpu/, cuda/). The
// engine owns sequences, page tables and validation; a backend owns where weights and KV pages
// live and how a step runs.
#pragma once
#include <memory>
#include <vector>

#include "common.h"
#include "kv_cache.h"
#include "model.h"

namespace weft {

struct EngineOptions;
struct StepEntry;
struct StepOutput;

// One execution context: its workspace (and on CUDA its stream and cuBLAS handle), leased for
// one step at a time.
class ExecContext {
 public:
  virtual ~ExecContext() = default;
  bool busy = false;

  // (optional) JS thread, at the end of Engine::prepare: order the step after pending KV copies.
  virtual void beforeStep() {}
  // Worker thread: one forward pass over `entries` (KV pages already allocated), writing
  // requested logits into `out`.
  virtual void forward(const Model& model, KvPool& kv, std::vector<StepEntry>& entries, std::vector<StepOutput>& out) = 0;
  // Worker thread, after the step's tokens were committed to the sequences: samples entry i
  // from logits row rowOf[i] (skipped when -1).
  virtual void sampleRows(std::vector<StepEntry>& entries, const std::vector<int>& rowOf, int vocab, std::vector<StepOutput>& out) = 0;
  // JS thread: after a step failed with WEFT_DEVICE_TIMEOUT, whether the context's late work has
  // finished (it serves again then). Contexts without a watchdog are always drained.
  virtual bool drained() { return true; }
  virtual bool usesPdl() const { return false; }
  // Test hook (WEFT_FAULT_INJECTION=1): the next step of this context meets `kind` (CUDA: "launch",
  // "oom", "hang", "trap"); releaseFault ends a "hang".
  virtual void injectFault(const std::string& kind) {
    throw WeftError(Err::BadArgument, "fault \"" + kind + "\": fault injection exists on the cuda backend only");
  }
  virtual void releaseFault() {}
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual const char* name() const = 0;
  // Bytes of KV memory the pool may use, given what the options ask for.
  virtual uint64_t kvBudget(uint64_t requested) { return requested; }
  // Whether the pool's pages live in host memory (KvPool allocates them) or the backend's.
  virtual bool kvInHostMemory() const { return true; }
  // Called once the pool exists (the backend allocates device pages here).
  virtual void attachKv(KvPool& kv) { (void)kv; }
  virtual std::unique_ptr<ExecContext> makeContext(const Model& model, const EngineOptions& opt, KvPool& kv) = 0;
  // Copies a sequence's pages out to host memory (park) and back into newly allocated pages
  // (restore). JS thread; a backend may complete them asynchronously as long as every later
  // step sees them done.
  virtual HostBuffer parkPages(KvPool& kv, const std::vector<int>& pages) = 0;
  virtual void restorePages(KvPool& kv, const std::vector<int>& pages, const HostBuffer& from) = 0;
  // Device facts for stats (empty on CPU).
  virtual std::string deviceName() const { return ""; }
  virtual uint64_t deviceWeightBytes() const { return 0; }
  // The device can run nothing more in this process (CUDA: a sticky error).
  virtual bool lost() const { return false; }
  // "fp8" when layer matrices are FP8 on the device, else "source"
  virtual const char* weightFormat() const { return "source"; }
};

std::unique_ptr<Backend> makeCpuBackend();
// Throws BackendUnavailable when weft was built without CUDA or no GPU is present.
std::unique_ptr<Backend> makeCudaBackend(const Model& model, const EngineOptions& opt);
// Number of usable CUDA devices (0 when built without CUDA or none is present).
int cudaDeviceCount();
// Device-to-device copy bandwidth in bytes/s (read + write counted), best of several copies of
// `bytes`; blocks the calling thread (benchmarks only).
double cudaCopyBandwidth(int device, uint64_t bytes);
void cudaMemInfo(int device, uint64_t& freeBytes, uint64_t& total);

}  // namespace weft
