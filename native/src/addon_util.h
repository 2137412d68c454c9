// Small helpers shared by the Node-API layer: coded errors, strict reads of JS values, and the
// parsing of the engine spec that src/engine/engine.ts builds.
#pragma once
#include <napi.h>

#include <cmath>
#include <string>
#include <vector>

#include "engine.h"

namespace weft {

inline Napi::Error codedError(Napi::Env env, const char* code, const std::string& msg, int64_t seq = -1) {
  Napi::Error e = Napi::Error::New(env, msg);
  e.Set("code", Napi::String::New(env, code));
  if (seq >= 0) e.Set("sequence", Napi::Number::New(env, double(seq)));
  return e;
}

// Runs fn, rethrowing native failures as coded JS errors.
template <class F>
auto guarded(Napi::Env env, F&& fn) -> decltype(fn()) {
  try {
    return fn();
  } catch (const Napi::Error&) {
    throw;
  } catch (const WeftError& e) {
    throw codedError(env, errCode(e.code), e.what(), e.sequence);
  } catch (const std::bad_alloc&) {
    throw codedError(env, "WEFT_INTERNAL", "out of host memory");
  } catch (const std::exception& e) {
    throw codedError(env, "WEFT_INTERNAL", e.what());
  }
}

inline double num(const Napi::Object& o, const char* key, double fallback, bool required = false) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined() || v.IsNull()) {
    if (required) throw WeftError(Err::BadArgument, std::string("missing field ") + key);
    return fallback;
  }
  if (!v.IsNumber()) throw WeftError(Err::BadArgument, std::string("field ") + key + " must be a number");
  return v.As<Napi::Number>().DoubleValue();
}

inline int intField(const Napi::Object& o, const char* key, int fallback, bool required = false) {
  double d = num(o, key, fallback, required);
  if (!std::isfinite(d) || d != std::floor(d) || d < -2147483648.0 || d > 2147483647.0)
    throw WeftError(Err::BadArgument, std::string("field ") + key + " must be an integer");
  return int(d);
}

inline int intArg(const Napi::Value& v, const char* what) {
  const double d = v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : NAN;
  if (!std::isfinite(d) || d != std::floor(d) || d < -2147483648.0 || d > 2147483647.0)
    throw WeftError(Err::BadArgument, std::string(what) + " must be an integer");
  return int(d);
}

inline DType parseDtype(const std::string& s, const std::string& where) {
  for (int i = 0; i < kNumDTypes; i++)
    if (s == dtypeName(DType(i))) return DType(i);
  throw WeftError(Err::UnsupportedDtype, where + ": dtype " + s + " is not supported (F32, F16, BF16, F8_E4M3, Q8_0, Q4_0, Q4_K, Q5_K, Q6_K)");
}

// Reads NativeEngineSpec (src/engine/native.ts) into native structures; throws WeftError.
void parseEngineSpec(const Napi::Object& spec, ModelConfig& cfg, EngineOptions& opt, std::vector<std::string>& files,
                     std::vector<TensorSpec>& tensors);

// Sets exports.quant (addon_quant.cpp): ggml block (de)quantization and the quantized GEMM.
void registerQuant(Napi::Env env, Napi::Object exports);

// measureBandwidth(bytes, threads) -> {readBytesPerS, bytes, threads}
Napi::Value MeasureBandwidth(const Napi::CallbackInfo& info);

}  // namespace weft
