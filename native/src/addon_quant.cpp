// The addon's `quant` object: ggml block (de)quantization for the GGUF writer, and the quantized
// GEMM (SIMD or scalar reference) for tests and benchmarks. Synchronous: quantize splits large
// inputs across the machine's cores.
#include <napi.h>

#include <cstring>
#include <thread>
#include <vector>

#include "addon_util.h"
#include "cpu/kernels.h"
#include "cpu/quant.h"

namespace weft {
namespace {

DType typeArg(const Napi::CallbackInfo& info, size_t i) {
  if (info.Length() <= i || !info[i].IsString()) throw WeftError(Err::BadArgument, "type must be a string such as 'Q4_K'");
  return parseDtype(info[i].As<Napi::String>().Utf8Value(), "quant");
}

int64_t countArg(const Napi::CallbackInfo& info, size_t i, const char* what) {
  if (info.Length() <= i) throw WeftError(Err::BadArgument, std::string(what) + " is missing");
  const double d = info[i].IsNumber() ? info[i].As<Napi::Number>().DoubleValue() : -1;
  if (!(d >= 0) || d != double(int64_t(d)) || d > 9007199254740991.0)
    throw WeftError(Err::BadArgument, std::string(what) + " must be a non-negative integer");
  return int64_t(d);
}

void checkBlocks(DType type, int64_t n, const char* what) {
  if (n % blockElems(type) != 0)
    throw WeftError(Err::BadArgument, std::string(what) + " (" + std::to_string(n) + ") is not a multiple of " +
                                          dtypeName(type) + "'s block of " + std::to_string(blockElems(type)));
}

template <class A>
A arrayArg(const Napi::CallbackInfo& info, size_t i, const char* what, napi_typedarray_type type, const char* typeName) {
  if (info.Length() <= i || !info[i].IsTypedArray() || info[i].As<Napi::TypedArray>().TypedArrayType() != type)
    throw WeftError(Err::BadArgument, std::string(what) + " must be a " + typeName);
  return info[i].As<A>();
}
Napi::Float32Array floatsArg(const Napi::CallbackInfo& info, size_t i, const char* what) {
  return arrayArg<Napi::Float32Array>(info, i, what, napi_float32_array, "Float32Array");
}
Napi::Uint8Array bytesArg(const Napi::CallbackInfo& info, size_t i, const char* what) {
  return arrayArg<Napi::Uint8Array>(info, i, what, napi_uint8_array, "Uint8Array");
}

// Bytes of a quantized (or plain) array, copied when misaligned for its 16-bit fields.
const uint8_t* alignedBytes(const Napi::Uint8Array& a, std::vector<uint8_t>& copy) {
  if ((reinterpret_cast<uintptr_t>(a.Data()) & 3) == 0) return a.Data();
  copy.assign(a.Data(), a.Data() + a.ByteLength());
  return copy.data();
}

int hardwareThreads() { return int(std::max(1u, std::thread::hardware_concurrency())); }

Napi::Value RowBytes(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    const DType type = typeArg(info, 0);
    const int64_t cols = countArg(info, 1, "cols");
    checkBlocks(type, cols, "cols");
    return Napi::Number::New(info.Env(), double(rowBytes(type, cols)));
  });
}

// quantize(type, Float32Array) -> Uint8Array of rowBytes(type, n)
Napi::Value Quantize(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    const DType type = typeArg(info, 0);
    const Napi::Float32Array src = floatsArg(info, 1, "values");
    const int64_t n = int64_t(src.ElementLength());
    checkBlocks(type, n, "the number of values");
    Napi::Uint8Array out = Napi::Uint8Array::New(info.Env(), size_t(rowBytes(type, n)));
    if (isQuant(type)) {
      const int64_t be = blockElems(type);
      cpu::quantizeRows(type, src.Data(), out.Data(), n / be, be, hardwareThreads());
    } else if (type == DType::BF16) {
      uint16_t* d = reinterpret_cast<uint16_t*>(out.Data());
      for (int64_t i = 0; i < n; i++) {
        uint32_t u;
        std::memcpy(&u, src.Data() + i, 4);
        d[i] = uint16_t((u + 0x7fff + ((u >> 16) & 1)) >> 16);  // round to nearest even
      }
    } else {
      cpu::storeKv(src.Data(), out.Data(), type, n);  // F32 copy or F16 conversion
    }
    return out;
  });
}

// dequantize(type, Uint8Array, n) -> Float32Array
Napi::Value Dequantize(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    const DType type = typeArg(info, 0);
    const Napi::Uint8Array src = bytesArg(info, 1, "data");
    const int64_t n = countArg(info, 2, "n");
    checkBlocks(type, n, "n");
    if (src.ByteLength() < rowBytes(type, n))
      throw WeftError(Err::BadArgument, "data holds " + std::to_string(src.ByteLength()) + " bytes, " + std::to_string(n) +
                                            " " + dtypeName(type) + " values need " + std::to_string(rowBytes(type, n)));
    std::vector<uint8_t> copy;
    Napi::Float32Array out = Napi::Float32Array::New(info.Env(), size_t(n));
    cpu::WeightView w{alignedBytes(src, copy), type, 1, n};
    cpu::loadRow(w, 0, out.Data());
    return out;
  });
}

// matmul(type, w, rows, cols, x, T, reference, n0 = 0, n1 = rows) -> Float32Array [T, rows]
// (rows outside [n0, n1) stay 0)
Napi::Value Matmul(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    const DType type = typeArg(info, 0);
    const Napi::Uint8Array w = bytesArg(info, 1, "w");
    const int64_t rows = countArg(info, 2, "rows"), cols = countArg(info, 3, "cols");
    const Napi::Float32Array x = floatsArg(info, 4, "x");
    const int64_t T = countArg(info, 5, "T");
    const bool reference = info.Length() > 6 && info[6].ToBoolean();
    const int64_t n0 = info.Length() > 7 && !info[7].IsUndefined() ? countArg(info, 7, "n0") : 0;
    const int64_t n1 = info.Length() > 8 && !info[8].IsUndefined() ? countArg(info, 8, "n1") : rows;
    checkBlocks(type, cols, "cols");
    if (w.ByteLength() < rows * rowBytes(type, cols)) throw WeftError(Err::BadArgument, "w is smaller than rows x rowBytes(type, cols)");
    if (int64_t(x.ElementLength()) < T * cols) throw WeftError(Err::BadArgument, "x is smaller than T x cols");
    if (n0 > n1 || n1 > rows) throw WeftError(Err::BadArgument, "need 0 <= n0 <= n1 <= rows");
    std::vector<uint8_t> copy;
    const cpu::WeightView view{alignedBytes(w, copy), type, rows, cols};
    Napi::Float32Array y = Napi::Float32Array::New(info.Env(), size_t(T * rows));
    if (T > 0 && n1 > n0) {
      if (isQuant(type)) cpu::gemmQuant(x.Data(), T, cols, view, n0, n1, y.Data(), rows, nullptr, false, reference);
      else cpu::gemm(x.Data(), T, cols, view, n0, n1, y.Data(), rows, nullptr, false);
    }
    return y;
  });
}

}  // namespace

void registerQuant(Napi::Env env, Napi::Object exports) {
  Napi::Object q = Napi::Object::New(env);
  q.Set("rowBytes", Napi::Function::New(env, RowBytes));
  q.Set("quantize", Napi::Function::New(env, Quantize));
  q.Set("dequantize", Napi::Function::New(env, Dequantize));
  q.Set("matmul", Napi::Function::New(env, Matmul));
  q.Set("kernel", cpu::quantKernelName());
  exports.Set("quant", q);
}

}  // namespace weft
