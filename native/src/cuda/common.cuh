// CUDA backend shared helpers: status checks that become coded errors, dtype conversions.
#pragma once
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <string>

#include "../common.h"

namespace weft::cuda {

inline void check(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return;
  cudaGetLastError();  // clear a non-sticky error so later calls start clean
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
  ~Buffer() { if (ptr) Memory::put(ptr); }
  void alloc(size_t n) {
    if (ptr) Memory::put(ptr);
    ptr = nullptr;
    bytes = 0;
    if (n) check(Memory::get(&ptr, n), "allocating memory");
    bytes = n;
  }
  template <typename T> T* as() const { return static_cast<T*>(ptr); }
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
