// CPU kernels of the architectures beyond Llama (Gemma, Qwen3, Phi-3): elementwise and per-head
// ops, RoPE variants and soft-capped attention. Like kernels.h, each works on one token's row (or
// one KV group) in a fixed order, so a row's result never depends on the batch or the threads.
#pragma once
#include <cstdint>

#include "kernels.h"

namespace weft::cpu {

// out[i] = gelu_tanh(g[i]) * u[i]  (GeGLU; Hugging Face's gelu_pytorch_tanh)
void geluTanhMul(const float* g, const float* u, int64_t n, float* out);

// x[i] = tanh(x[i] / cap) * cap
void softcap(float* x, int64_t n, float cap);

// RMSNorm of each of `numHeads` heads of `headDim`, in place, with one weight vector (headDim)
void headRmsNorm(float* x, int numHeads, int headDim, const float* w, float eps);

// x[i] += rmsnorm(y)[i] * w[i]: a block's output normed before the residual add (Gemma)
void addNormed(float* x, const float* y, const float* w, float eps, int64_t n);

// RoPE on the first `rotaryDim` dims of each head (the rest pass through). Pairs are
// (i, i + rotaryDim/2) (rotate_half), or (2i, 2i + 1) when `interleaved`; cos/sin hold rotaryDim/2.
void ropePartial(float* x, int numHeads, int headDim, int rotaryDim, bool interleaved, const float* cosv,
                 const float* sinv);

// attendGroup with the scores soft-capped before the softmax: tanh(s * scale / cap) * cap (Gemma 2)
constexpr int64_t kMaxSoftcapHeadDim = 512;
void attendGroupSoftcap(const float* q, int groupHeads, const KvAccessor& kv, int64_t numPos, float scale, float cap,
                        float* out, float* scores);

// f32 rounded to bf16 (nearest even) and back
float roundToBf16(float x);

}  // namespace weft::cpu
