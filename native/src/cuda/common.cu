// Process-wide state of the CUDA backend: whether the GPU context was lost to a sticky error, and
// whether this thread's launches use programmatic dependent launch.
#include <atomic>
#include <cstdlib>

#include "common.cuh"

namespace weft::cuda {
namespace {
std::atomic<int> gSticky{0};  // the first sticky cudaError_t seen, 0 while none
}  // namespace

void noteStickyError(cudaError_t e) {
  int none = 0;
  gSticky.compare_exchange_strong(none, int(e));
}

cudaError_t stickyError() { return cudaError_t(gSticky.load()); }

bool& pdlOnThisThread() {
  thread_local bool on = false;
  return on;
}

// Read when a context is made (so that a benchmark can load one engine with and one without).
// Off unless WEFT_CUDA_PDL=1: measured on an H200 (docs/cuda.md), decode at 1 sequence ran 8-10%
// slower with it.
bool pdlAllowed() {
  const char* v = std::getenv("WEFT_CUDA_PDL");
  if (!v || std::string(v) != "1") return false;
  int dev = 0, major = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return major >= 9;
}

}  // namespace weft::cuda
