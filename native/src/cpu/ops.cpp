#include "ops.h"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace weft::cpu {

void geluTanhMul(const float* g, const float* u, int64_t n, float* out) {
  const float k = 0.7978845608028654f;  // sqrt(2 / pi)
  for (int64_t i = 0; i < n; i++) {
    const float x = g[i];
    out[i] = 0.5f * x * (1.0f + std::tanh(k * (x + 0.044715f * x * x * x))) * u[i];
  }
}

void softcap(float* x, int64_t n, float cap) {
  for (int64_t i = 0; i < n; i++) x[i] = std::tanh(x[i] / cap) * cap;
}

void headRmsNorm(float* x, int numHeads, int headDim, const float* w, float eps) {
  for (int h = 0; h < numHeads; h++) {
    float* v = x + int64_t(h) * headDim;
    rmsnorm(v, w, eps, headDim, v);  // rmsnorm reads each element before writing it
  }
}

void addNormed(float* x, const float* y, const float* w, float eps, int64_t n) {
  float ss = 0;
  for (int64_t i = 0; i < n; i++) ss = std::fma(y[i], y[i], ss);
  const float scale = 1.0f / std::sqrt(ss / float(n) + eps);
  for (int64_t i = 0; i < n; i++) x[i] += y[i] * scale * w[i];
}

void ropePartial(float* x, int numHeads, int headDim, int rotaryDim, bool interleaved, const float* cosv,
                 const float* sinv) {
  const int half = rotaryDim / 2;
  const int stride = interleaved ? 2 : 1, partner = interleaved ? 1 : half;
  for (int h = 0; h < numHeads; h++) {
    float* v = x + int64_t(h) * headDim;
    for (int i = 0; i < half; i++) {
      float* a = v + i * stride;
      float* b = a + partner;
      const float va = *a, vb = *b;
      *a = va * cosv[i] - vb * sinv[i];
      *b = vb * cosv[i] + va * sinv[i];
    }
  }
}

// Position j's head vector as f32.
static void kvRow(const uint8_t* const* pageBase, const KvAccessor& kv, int64_t j, float* out) {
  const uint8_t* p = pageBase[j / kv.pageTokens] + (j % kv.pageTokens) * kv.headDim * int64_t(dtypeSize(kv.dtype));
  for (int64_t i = 0; i < kv.headDim; i++) out[i] = loadScalar(p, kv.dtype, i);
}

void attendGroupSoftcap(const float* q, int groupHeads, const KvAccessor& kv, int64_t numPos, float scale, float cap,
                        float* out, float* scores) {
  const int64_t d = kv.headDim;
  float row[kMaxSoftcapHeadDim];  // loadModel checks d against it
  for (int h = 0; h < groupHeads; h++) {
    const float* qh = q + h * d;
    float* oh = out + h * d;
    float maxScore = -INFINITY;
    for (int64_t j = 0; j < numPos; j++) {
      kvRow(kv.pageBase, kv, j, row);
      float s = 0;
      for (int64_t i = 0; i < d; i++) s = std::fma(qh[i], row[i], s);
      s = std::tanh(s * scale / cap) * cap;
      scores[j] = s;
      maxScore = std::max(maxScore, s);
    }
    float total = 0;
    for (int64_t j = 0; j < numPos; j++) {
      scores[j] = std::exp(scores[j] - maxScore);
      total += scores[j];
    }
    for (int64_t i = 0; i < d; i++) oh[i] = 0;
    for (int64_t j = 0; j < numPos; j++) {
      kvRow(kv.pageBaseV, kv, j, row);
      for (int64_t i = 0; i < d; i++) oh[i] = std::fma(scores[j], row[i], oh[i]);
    }
    const float inv = 1.0f / total;
    for (int64_t i = 0; i < d; i++) oh[i] *= inv;
  }
}

float roundToBf16(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  if ((u & 0x7f800000u) != 0x7f800000u) u += 0x7fffu + ((u >> 16) & 1);  // finite: round to nearest even
  return bf16ToF32(uint16_t(u >> 16));
}

}  // namespace weft::cpu
