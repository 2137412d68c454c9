// Shared definitions of the native engine: error codes (mirroring src/errors.ts), dtypes and
// scalar conversions.
#pragma once
#include <cstdint>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>

namespace weft {

// Codes cross into JS as the `code` property; the strings are the catalog's (src/errors.ts).
enum class Err {
  ModelNotFound, ModelFormat, UnsupportedArch, UnsupportedDtype, TensorMissing, TensorShape, Tokenizer,
  BadArgument, TokenOutOfRange, ContextOverflow, BatchTooLarge, KvExhausted, SequenceNotFound,
  SequenceParked, SequenceBusy, ContextBusy, Cancelled, Disposed, Internal, BackendUnavailable,
  DeviceOutOfMemory, Device, DeviceTimeout, DeviceLost,
};

inline const char* errCode(Err e) {
  switch (e) {
    case Err::ModelNotFound: return "WEFT_MODEL_NOT_FOUND";
    case Err::ModelFormat: return "WEFT_MODEL_FORMAT";
    case Err::UnsupportedArch: return "WEFT_UNSUPPORTED_ARCH";
    case Err::UnsupportedDtype: return "WEFT_UNSUPPORTED_DTYPE";
    case Err::TensorMissing: return "WEFT_TENSOR_MISSING";
    case Err::TensorShape: return "WEFT_TENSOR_SHAPE";
    case Err::Tokenizer: return "WEFT_TOKENIZER";
    case Err::BadArgument: return "WEFT_BAD_ARGUMENT";
    case Err::TokenOutOfRange: return "WEFT_TOKEN_OUT_OF_RANGE";
    case Err::ContextOverflow: return "WEFT_CONTEXT_OVERFLOW";
    case Err::BatchTooLarge: return "WEFT_BATCH_TOO_LARGE";
    case Err::KvExhausted: return "WEFT_KV_EXHAUSTED";
    case Err::SequenceNotFound: return "WEFT_SEQUENCE_NOT_FOUND";
    case Err::SequenceParked: return "WEFT_SEQUENCE_PARKED";
    case Err::SequenceBusy: return "WEFT_SEQUENCE_BUSY";
    case Err::ContextBusy: return "WEFT_CONTEXT_BUSY";
    case Err::Cancelled: return "WEFT_CANCELLED";
    case Err::Disposed: return "WEFT_DISPOSED";
    case Err::Internal: return "WEFT_INTERNAL";
    case Err::BackendUnavailable: return "WEFT_BACKEND_UNAVAILABLE";
    case Err::DeviceOutOfMemory: return "WEFT_DEVICE_OUT_OF_MEMORY";
    case Err::Device: return "WEFT_DEVICE_ERROR";
    case Err::DeviceTimeout: return "WEFT_DEVICE_TIMEOUT";
    case Err::DeviceLost: return "WEFT_DEVICE_LOST";
  }
  return "WEFT_INTERNAL";
}

struct WeftError : std::runtime_error {
  Err code;
  int64_t sequence = -1;  // the sequence at fault, when there is one
  WeftError(Err c, const std::string& msg, int64_t seq = -1) : std::runtime_error(msg), code(c), sequence(seq) {}
};

// A block of host memory whose owner decides how it is allocated (pinned on CUDA).
struct HostBuffer {
  std::shared_ptr<uint8_t> data;
  uint64_t size = 0;
};

// Element types of weights and KV. F32/F16/BF16 are plain arrays; Q8_0..Q6_K are ggml's block
// formats (GGUF files): a row of K elements is K / blockElems(d) blocks of blockBytes(d) bytes.
// F8_E4M3 is OCP FP8 (1 sign, 4 exponent bits with bias 7, 3 mantissa bits, no infinities, 0x7f/0xff
// NaN, largest 448) as Hugging Face FP8 checkpoints store it; its scales live beside it
// (WeightView::rowScale).
enum class DType : int { F32 = 0, F16 = 1, BF16 = 2, Q8_0 = 3, Q4_0 = 4, Q4_K = 5, Q5_K = 6, Q6_K = 7, F8_E4M3 = 8 };
constexpr int kNumDTypes = 9;

inline bool isQuant(DType d) { return int(d) >= int(DType::Q8_0) && int(d) <= int(DType::Q6_K); }
// Bytes per element of a plain type (the quantized ones have no per-element size: use rowBytes).
inline size_t dtypeSize(DType d) { return d == DType::F32 ? 4 : d == DType::F8_E4M3 ? 1 : 2; }
inline int64_t blockElems(DType d) {
  switch (d) {
    case DType::Q8_0: case DType::Q4_0: return 32;
    case DType::Q4_K: case DType::Q5_K: case DType::Q6_K: return 256;
    default: return 1;
  }
}
inline uint64_t blockBytes(DType d) {
  switch (d) {
    case DType::F32: return 4;
    case DType::F16: case DType::BF16: return 2;
    case DType::F8_E4M3: return 1;
    case DType::Q8_0: return 34;   // f16 d, 32 x int8
    case DType::Q4_0: return 18;   // f16 d, 16 bytes of nibbles
    case DType::Q4_K: return 144;  // f16 d, f16 dmin, 12 bytes of 6-bit scales/mins, 128 bytes of nibbles
    case DType::Q5_K: return 176;  // as Q4_K + 32 bytes of high bits
    case DType::Q6_K: return 210;  // 128 low nibbles, 64 high 2-bit, 16 int8 scales, f16 d
  }
  return 0;
}
// Bytes of a row of `cols` elements (cols must be a multiple of blockElems).
inline uint64_t rowBytes(DType d, int64_t cols) { return uint64_t(cols / blockElems(d)) * blockBytes(d); }
inline const char* dtypeName(DType d) {
  static const char* names[] = {"F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_K", "Q5_K", "Q6_K", "F8_E4M3"};
  return names[int(d)];
}
// Element i of a quantized array (dequantizes its block; slow: for vectors and tests only).
float quantElement(const void* p, DType d, size_t i);

inline float bf16ToF32(uint16_t h) {
  uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline float f16ToF32(uint16_t h) {
  uint32_t sign = uint32_t(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, mant = h & 0x3ff, u;
  if (exp == 0) {
    if (mant == 0) {
      u = sign;
    } else {  // subnormal: normalize
      int e = -1;
      do { e++; mant <<= 1; } while (!(mant & 0x400));
      u = sign | uint32_t(127 - 15 - e) << 23 | (mant & 0x3ff) << 13;
    }
  } else if (exp == 31) {
    u = sign | 0x7f800000u | mant << 13;
  } else {
    u = sign | (exp + 127 - 15) << 23 | mant << 13;
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline uint16_t f32ToF16(float f) {  // round to nearest even
  uint32_t x;
  std::memcpy(&x, &f, 4);
  uint32_t sign = (x >> 16) & 0x8000;
  int32_t exp = int32_t((x >> 23) & 0xff) - 127 + 15;
  uint32_t mant = x & 0x7fffff;
  if (((x >> 23) & 0xff) == 0xff) return uint16_t(sign | 0x7c00 | (mant ? 0x200 : 0));
  if (exp >= 31) return uint16_t(sign | 0x7c00);
  if (exp <= 0) {
    if (exp < -10) return uint16_t(sign);
    mant |= 0x800000;
    uint32_t shift = uint32_t(14 - exp);
    uint32_t half = 1u << (shift - 1), rest = mant & ((1u << shift) - 1);
    uint32_t r = mant >> shift;
    if (rest > half || (rest == half && (r & 1))) r++;
    return uint16_t(sign | r);
  }
  uint32_t r = uint32_t(exp) << 10 | mant >> 13, rest = mant & 0x1fff;
  if (rest > 0x1000 || (rest == 0x1000 && (r & 1))) r++;
  return uint16_t(sign | r);
}

// OCP FP8 E4M3 (unscaled) to f32: exact.
inline float fp8e4m3ToF32(uint8_t b) {
  const uint32_t sign = uint32_t(b & 0x80) << 24, exp = (b >> 3) & 0xf, mant = b & 7;
  uint32_t u;
  if (exp == 0xf && mant == 7) {
    u = sign | 0x7fc00000u;  // NaN
  } else if (exp == 0) {
    const float f = float(mant) * 0.001953125f;  // subnormal: mant * 2^-9
    std::memcpy(&u, &f, 4);
    u |= sign;
  } else {
    u = sign | (exp + 127 - 7) << 23 | mant << 20;
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline float loadScalar(const void* p, DType d, size_t i) {
  switch (d) {
    case DType::F8_E4M3: return fp8e4m3ToF32(static_cast<const uint8_t*>(p)[i]);
    case DType::F32: return static_cast<const float*>(p)[i];
    case DType::F16: return f16ToF32(static_cast<const uint16_t*>(p)[i]);
    case DType::BF16: return bf16ToF32(static_cast<const uint16_t*>(p)[i]);
    default: return quantElement(p, d, i);
  }
}

}  // namespace weft
