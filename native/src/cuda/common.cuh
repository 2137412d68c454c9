// CUDA backend shared helpers: status checks that become coded errors, dtype conversions.
#pragma once
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <string>
#include <utility>

#include "../common.h"

namespace weft::cuda {

// Errors that leave the CUDA context unusable for the rest of the process (a kernel's memory
// fault, a trap, a lost device): every later call fails with the same error.
inline bool isStickyError(cudaError_t e) {
  switch (e) {
    case cudaErrorIllegalAddress: case cudaErrorLaunchFailure: case cudaErrorHardwareStackError:
    case cudaErrorIllegalInstruction: case cudaErrorMisalignedAddress: case cudaErrorInvalidAddressSpace:
    case cudaErrorInvalidPc: case cudaErrorAssert: case cudaErrorECCUncorrectable:
    case cudaErrorContextIsDestroyed: case cudaErrorLaunchTimeout: case cudaErrorUnknown:
#if CUDART_VERSION >= 12000
    case cudaErrorDeviceUninitialized:
#endif
      return true;
    default:
      return false;
  }
}

// Set once a sticky error was seen (common.cu): the backend then answers WEFT_DEVICE_LOST.
void noteStickyError(cudaError_t e);
cudaError_t stickyError();  // cudaSuccess while none was seen

inline void check(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return;
  cudaGetLastError();  // clear a non-sticky error so later calls start clean
  if (isStickyError(e)) {
    noteStickyError(e);
    throw WeftError(Err::DeviceLost, std::string(what) + ": " + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) +
                                         "); the GPU context is unusable: restart the process");
  }
  const Err code = e == cudaErrorMemoryAllocation ? Err::DeviceOutOfMemory : Err::Device;
  throw WeftError(code, std::string(what) + ": " + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")");
}

inline const char* cublasName(cublasStatus_t s) {
  switch (s) {
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    default: return "CUBLAS_STATUS_UNKNOWN";
  }
}

inline void check(cublasStatus_t s, const char* what) {
  if (s == CUBLAS_STATUS_SUCCESS) return;
  const Err code = s == CUBLAS_STATUS_ALLOC_FAILED ? Err::DeviceOutOfMemory : Err::Device;
  throw WeftError(code, std::string(what) + ": " + cublasName(s));
}

#define WEFT_CU(call) ::weft::cuda::check((call), #call)

// Programmatic dependent launch (sm_90): a kernel launched with the attribute may begin while the
// kernel before it in the stream is still running. Every kernel launched through launch() calls
// gridDepWait() before it reads what an earlier kernel wrote or writes what one reads; what it does
// before (loading weights, which no kernel writes) overlaps the previous kernel's tail. Each calls
// gridDepLaunchDependents() first: the next kernel's blocks may then be scheduled as soon as every
// block of this one has started. Without the attribute both are no-ops.
__device__ __forceinline__ void gridDepWait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void gridDepLaunchDependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// Whether launch() adds the attribute on this thread (the context sets it around a forward pass;
// WEFT_CUDA_PDL=1 turns it on: off by default, it measured slower).
bool& pdlOnThisThread();
bool pdlAllowed();  // sm_90 or later and WEFT_CUDA_PDL=1

template <typename... KArgs, typename... Args>
void launch(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t s, Args&&... args) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = s;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = pdlOnThisThread() ? 1 : 0;
  check(cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...), "launching a kernel");
}

// Memory owned by one object, freed on destruction: device memory (DeviceBuffer) or pinned host
// memory (PinnedBuffer: page-locked, so copies to and from it are asynchronous).
struct DeviceMemory {
  static cudaError_t get(void** p, size_t n) { return cudaMalloc(p, n); }
  static void put(void* p) { cudaFree(p); }
};
struct PinnedMemory {
  static cudaError_t get(void** p, size_t n) { return cudaMallocHost(p, n); }
  static void put(void* p) { cudaFreeHost(p); }
};

template <typename Memory>
struct Buffer {
  void* ptr = nullptr;
  size_t bytes = 0;
  Buffer() = default;
  explicit Buffer(size_t n) { alloc(n); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  Buffer(Buffer&& o) noexcept : ptr(o.ptr), bytes(o.bytes) { o.ptr = nullptr; o.bytes = 0; }
  Buffer& operator=(Buffer&& o) noexcept {
    if (this != &o) {
      if (ptr) Memory::put(ptr);
      ptr = o.ptr;
      bytes = o.bytes;
      o.ptr = nullptr;
      o.bytes = 0;
    }
    return *this;
  }
  ~Buffer() { if (ptr) Memory::put(ptr); }
  void alloc(size_t n) {
    if (ptr) Memory::put(ptr);
    ptr = nullptr;
    bytes = 0;
    if (n) check(Memory::get(&ptr, n), "allocating memory");
    bytes = n;
  }
  template <typename T> T* as() const { return static_cast<T*>(ptr); }
  // Gives the memory up without freeing it (a stuck stream's kernels may still use it, and freeing
  // would wait for them).
  void leak() {
    ptr = nullptr;
    bytes = 0;
  }
};
using DeviceBuffer = Buffer<DeviceMemory>;
using PinnedBuffer = Buffer<PinnedMemory>;

__device__ __forceinline__ float toF(float x) { return x; }
__device__ __forceinline__ float toF(__half x) { return __half2float(x); }
__device__ __forceinline__ float toF(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T> __device__ __forceinline__ T fromF(float x);
template <> __device__ __forceinline__ float fromF<float>(float x) { return x; }
template <> __device__ __forceinline__ __half fromF<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 fromF<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

}  // namespace weft::cuda
