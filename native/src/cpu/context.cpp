#include "context.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <exception>

#include "ops.h"

namespace weft {

using cpu::gemm;

static int64_t ceilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

static int rotaryDim(const ModelConfig& c) { return c.rotaryDim > 0 ? c.rotaryDim : c.headDim; }

// cos and sin of position `pos` times each inverse frequency, scaled by `factor` (LongRoPE's).
static void ropeAngles(const std::vector<double>& invFreq, int pos, double factor, float* cosv, float* sinv) {
  for (size_t i = 0; i < invFreq.size(); i++) {
    const double a = double(pos) * invFreq[i];
    cosv[i] = float(std::cos(a) * factor);
    sinv[i] = float(std::sin(a) * factor);
  }
}

CpuContext::CpuContext(const Model& model, const EngineOptions& opt) : opt_(opt), pool_(opt.numThreads) {
  const ModelConfig& c = model.cfg;
  const int64_t T = opt.maxBatchTokens, R = opt.maxLogitRows, H = c.hidden;
  const int64_t qDim = int64_t(c.numHeads) * c.headDim, kvDim = int64_t(c.numKvHeads) * c.headDim;
  x_.resize(T * H);
  xb_.resize(T * H);
  q_.resize(T * qDim);
  k_.resize(T * kvDim);
  v_.resize(T * kvDim);
  att_.resize(T * qDim);
  gate_.resize(T * c.ffn);
  up_.resize(T * c.ffn);
  const int64_t half = rotaryDim(c) / 2;
  cos_.resize(T * half);
  sin_.resize(T * half);
  if (!model.invFreqLocal.empty()) {
    cosLocal_.resize(T * half);
    sinLocal_.resize(T * half);
  }
  // LongRoPE: Hugging Face switches to the long factors once a sequence outgrows the original
  // context. weft picks one table per engine, by the context it serves, so that a sequence's logits
  // never depend on its length so far or on how it was chunked (docs/models.md).
  const bool longRope = !model.invFreqLong.empty() && double(opt.maxContext) > c.ropeOriginalMax;
  invFreq_ = longRope ? &model.invFreqLong : &model.invFreq;
  logitIn_.resize(R * H);
  logits_.resize(R * int64_t(c.vocab));
  tok_.resize(T);
  pos_.resize(T);
  seqOf_.resize(T);
  rowToken_.resize(R);
  const int maxPos = opt.maxContext;
  scores_.assign(pool_.size(), std::vector<float>(maxPos));
  samplerScratch_.resize(pool_.size());
  for (auto& s : samplerScratch_) {
    s.values.resize(c.vocab);
    s.ids.resize(c.vocab);
  }
  const size_t maxPages = size_t(ceilDiv(maxPos, opt.kvPageTokens));
  pageK_.assign(pool_.size(), std::vector<const uint8_t*>(maxPages));
  pageV_.assign(pool_.size(), std::vector<const uint8_t*>(maxPages));
  if (std::any_of(c.layerWindow.begin(), c.layerWindow.end(), [&](int w) { return w > 0 && w < maxPos; })) {
    posK_.assign(pool_.size(), std::vector<const uint8_t*>(maxPos));
    posV_.assign(pool_.size(), std::vector<const uint8_t*>(maxPos));
  }
}

void CpuContext::attend(const Model& model, KvPool& kv, const std::vector<StepEntry>& entries, int l, int64_t T) {
  const ModelConfig& c = model.cfg;
  const int64_t D = c.headDim;
  const int nkv = c.numKvHeads, group = c.numHeads / nkv;
  const int64_t qDim = int64_t(c.numHeads) * D;
  const int PT = kv.pageTokens();
  const int64_t kvElt = int64_t(dtypeSize(kv.dtype()));
  const int window = c.layerWindow.empty() ? 0 : c.layerWindow[l];
  const float scale = c.queryPreAttnScalar > 0 ? float(1.0 / std::sqrt(c.queryPreAttnScalar)) : 1.0f / std::sqrt(float(D));
  pool_.run([&](int ti, int nth) {
    int64_t w0, w1;
    ThreadPool::chunk(T * nkv, 1, ti, nth, w0, w1);
    for (int64_t w = w0; w < w1; w++) {
      const int64_t t = w / nkv;
      const int g = int(w % nkv);
      const Sequence& s = *entries[seqOf_[t]].seq;
      const int64_t numPos = pos_[t] + 1;
      // causal; a sliding-window layer sees positions (pos - window, pos]
      const int64_t first = window > 0 && numPos > window ? numPos - window : 0;
      cpu::KvAccessor acc{nullptr, nullptr, PT, D, kv.dtype()};
      if (first == 0) {  // whole pages
        auto& pk = pageK_[ti];
        auto& pv = pageV_[ti];
        for (int64_t p = 0; p < ceilDiv(numPos, PT); p++) {
          pk[p] = kv.block(s.pages[p], l, 0, g);
          pv[p] = kv.block(s.pages[p], l, 1, g);
        }
        acc.pageBase = pk.data();
        acc.pageBaseV = pv.data();
      } else {  // one pointer per position of the window
        auto& pk = posK_[ti];
        auto& pv = posV_[ti];
        for (int64_t j = first; j < numPos; j++) {
          pk[j - first] = kv.block(s.pages[j / PT], l, 0, g) + (j % PT) * D * kvElt;
          pv[j - first] = kv.block(s.pages[j / PT], l, 1, g) + (j % PT) * D * kvElt;
        }
        acc = cpu::KvAccessor{pk.data(), pv.data(), 1, D, kv.dtype()};
      }
      const int64_t off = t * qDim + int64_t(g) * group * D;
      if (c.attnSoftcap > 0)
        cpu::attendGroupSoftcap(q_.data() + off, group, acc, numPos - first, scale, c.attnSoftcap, att_.data() + off, scores_[ti].data());
      else
        cpu::attendGroup(q_.data() + off, group, acc, numPos - first, scale, att_.data() + off, scores_[ti].data());
    }
  });
}

void CpuContext::forward(const Model& model, KvPool& kv, std::vector<StepEntry>& entries, std::vector<StepOutput>& out) {
  const ModelConfig& c = model.cfg;
  const int64_t H = c.hidden, D = c.headDim, half = rotaryDim(c) / 2, F = c.ffn, V = c.vocab;
  const int nh = c.numHeads, nkv = c.numKvHeads;
  const int64_t qDim = int64_t(nh) * D, kvDim = int64_t(nkv) * D;
  const int PT = kv.pageTokens();
  const int64_t kvElt = int64_t(dtypeSize(kv.dtype()));
  const bool plainRope = half * 2 == D && !c.ropeInterleaved;

  // Flatten the batch: token t of the step is (tok_[t], pos_[t]) of entry seqOf_[t].
  int64_t T = 0, R = 0;
  out.assign(entries.size(), StepOutput{});
  std::vector<std::pair<int, int>> rowsOf(entries.size());  // (first logits row, count)
  for (size_t e = 0; e < entries.size(); e++) {
    const StepEntry& en = entries[e];
    const int64_t first = T;
    for (size_t i = 0; i < en.tokens.size(); i++, T++) {
      tok_[T] = en.tokens[i];
      pos_[T] = en.startPos + int(i);
      seqOf_[T] = int(e);
    }
    const bool wantLast = en.logits == LogitsMode::Last || en.sample;
    rowsOf[e].first = int(R);
    if (en.logits == LogitsMode::All) {
      for (int64_t t = first; t < T; t++) rowToken_[R++] = int(t);
    } else if (wantLast) {
      rowToken_[R++] = int(T - 1);
    }
    rowsOf[e].second = int(R) - rowsOf[e].first;
    out[e].seq = en.seq->id;
  }
  const cpu::KernelTuning& tune = opt_.tuningFor(T);  // the settings for this kind of step

  // Embeddings (scaled for Gemma) and this step's RoPE angles.
  pool_.run([&](int ti, int nth) {
    int64_t t0, t1;
    ThreadPool::chunk(T, 1, ti, nth, t0, t1);
    for (int64_t t = t0; t < t1; t++) {
      float* xt = x_.data() + t * H;
      cpu::loadRow(model.embed, tok_[t], xt);
      if (model.embedScale != 1)
        for (int64_t i = 0; i < H; i++) xt[i] *= model.embedScale;
      ropeAngles(*invFreq_, pos_[t], c.ropeAttnFactor, cos_.data() + t * half, sin_.data() + t * half);
      if (!cosLocal_.empty()) ropeAngles(model.invFreqLocal, pos_[t], 1.0, cosLocal_.data() + t * half, sinLocal_.data() + t * half);
    }
  });

  auto normRows = [&](const std::vector<float>& w) {
    pool_.run([&](int ti, int nth) {
      int64_t t0, t1;
      ThreadPool::chunk(T, 1, ti, nth, t0, t1);
      for (int64_t t = t0; t < t1; t++) cpu::rmsnorm(x_.data() + t * H, w.data(), c.rmsEps, H, xb_.data() + t * H);
    });
  };
  // x += norm(xb) row by row (Gemma's post-attention and post-feed-forward norms)
  auto addNormedRows = [&](const std::vector<float>& w) {
    pool_.run([&](int ti, int nth) {
      int64_t t0, t1;
      ThreadPool::chunk(T, 1, ti, nth, t0, t1);
      for (int64_t t = t0; t < t1; t++) cpu::addNormed(x_.data() + t * H, xb_.data() + t * H, w.data(), c.rmsEps, H);
    });
  };
  for (int l = 0; l < c.numLayers; l++) {
    const LayerWeights& L = model.layers[l];
    const bool localRope = !cosLocal_.empty() && !c.layerWindow.empty() && c.layerWindow[l] > 0;
    const float* cosv = localRope ? cosLocal_.data() : cos_.data();
    const float* sinv = localRope ? sinLocal_.data() : sin_.data();
    // attention input norm, then the q/k/v projections (one parallel region for all three)
    normRows(L.inputNorm);
    pool_.run([&](int ti, int nth) {
      int64_t n0, n1;
      ThreadPool::chunk(qDim, cpu::kPanelRows, ti, nth, n0, n1);
      gemm(xb_.data(), T, H, L.q, n0, n1, q_.data(), qDim, L.qBias.empty() ? nullptr : L.qBias.data(), false, tune);
      ThreadPool::chunk(kvDim, cpu::kPanelRows, ti, nth, n0, n1);
      gemm(xb_.data(), T, H, L.k, n0, n1, k_.data(), kvDim, L.kBias.empty() ? nullptr : L.kBias.data(), false, tune);
      gemm(xb_.data(), T, H, L.v, n0, n1, v_.data(), kvDim, L.vBias.empty() ? nullptr : L.vBias.data(), false, tune);
    });
    // per-head q/k norms (Qwen3, Gemma 3), RoPE on q and k, then k and v into each token's KV page slot
    pool_.run([&](int ti, int nth) {
      int64_t t0, t1;
      ThreadPool::chunk(T, 1, ti, nth, t0, t1);
      for (int64_t t = t0; t < t1; t++) {
        float* qt = q_.data() + t * qDim;
        float* kt = k_.data() + t * kvDim;
        if (c.qkNorm) {
          cpu::headRmsNorm(qt, nh, int(D), L.qNorm.data(), c.rmsEps);
          cpu::headRmsNorm(kt, nkv, int(D), L.kNorm.data(), c.rmsEps);
        }
        if (plainRope) {
          cpu::rope(qt, nh, int(D), cosv + t * half, sinv + t * half);
          cpu::rope(kt, nkv, int(D), cosv + t * half, sinv + t * half);
        } else {
          cpu::ropePartial(qt, nh, int(D), int(2 * half), c.ropeInterleaved, cosv + t * half, sinv + t * half);
          cpu::ropePartial(kt, nkv, int(D), int(2 * half), c.ropeInterleaved, cosv + t * half, sinv + t * half);
        }
        const Sequence& s = *entries[seqOf_[t]].seq;
        const int page = s.pages[pos_[t] / PT], slot = pos_[t] % PT;
        for (int g = 0; g < nkv; g++) {
          cpu::storeKv(kt + g * D, kv.block(page, l, 0, g) + slot * D * kvElt, kv.dtype(), D);
          cpu::storeKv(v_.data() + t * kvDim + g * D, kv.block(page, l, 1, g) + slot * D * kvElt, kv.dtype(), D);
        }
      }
    });
    attend(model, kv, entries, l, T);
    // output projection, added into the residual stream (Gemma: normed first)
    pool_.run([&](int ti, int nth) {
      int64_t n0, n1;
      ThreadPool::chunk(H, cpu::kPanelRows, ti, nth, n0, n1);
      const float* bias = L.oBias.empty() ? nullptr : L.oBias.data();
      if (c.sandwichNorms)
        gemm(att_.data(), T, qDim, L.o, n0, n1, xb_.data(), H, bias, false, tune);
      else
        gemm(att_.data(), T, qDim, L.o, n0, n1, x_.data(), H, bias, true, tune);
    });
    if (c.sandwichNorms) addNormedRows(L.attnOutNorm);
    // MLP: norm, gate and up with SwiGLU (GeGLU) applied to each thread's columns while still in cache
    normRows(L.postNorm);
    pool_.run([&](int ti, int nth) {
      int64_t n0, n1;
      ThreadPool::chunk(F, cpu::kPanelRows, ti, nth, n0, n1);
      if (n0 >= n1) return;
      gemm(xb_.data(), T, H, L.gate, n0, n1, gate_.data(), F, nullptr, false, tune);
      gemm(xb_.data(), T, H, L.up, n0, n1, up_.data(), F, nullptr, false, tune);
      for (int64_t t = 0; t < T; t++) {
        float* g = gate_.data() + t * F + n0;
        if (c.activation == Activation::GeluTanh)
          cpu::geluTanhMul(g, up_.data() + t * F + n0, n1 - n0, g);
        else
          cpu::siluMul(g, up_.data() + t * F + n0, n1 - n0, g);
      }
    });
    pool_.run([&](int ti, int nth) {
      int64_t n0, n1;
      ThreadPool::chunk(H, cpu::kPanelRows, ti, nth, n0, n1);
      if (c.sandwichNorms)
        gemm(gate_.data(), T, F, L.down, n0, n1, xb_.data(), H, nullptr, false, tune);
      else
        gemm(gate_.data(), T, F, L.down, n0, n1, x_.data(), H, nullptr, true, tune);
    });
    if (c.sandwichNorms) addNormedRows(L.ffnOutNorm);
  }

  if (R == 0) return;
  // final norm and LM head, only for the rows that need logits
  pool_.run([&](int ti, int nth) {
    int64_t r0, r1;
    ThreadPool::chunk(R, 1, ti, nth, r0, r1);
    for (int64_t r = r0; r < r1; r++)
      cpu::rmsnorm(x_.data() + int64_t(rowToken_[r]) * H, model.finalNorm.data(), c.rmsEps, H, logitIn_.data() + r * H);
  });
  pool_.run([&](int ti, int nth) {
    int64_t n0, n1;
    ThreadPool::chunk(V, cpu::kPanelRows, ti, nth, n0, n1);
    gemm(logitIn_.data(), R, H, model.lmHead, n0, n1, logits_.data(), V, nullptr, false, tune);
    if (c.finalSoftcap > 0)
      for (int64_t r = 0; r < R; r++) cpu::softcap(logits_.data() + r * V + n0, n1 - n0, c.finalSoftcap);
  });
  for (size_t e = 0; e < entries.size(); e++) {
    if (entries[e].logits == LogitsMode::None) continue;
    const auto [first, count] = rowsOf[e];
    out[e].logitRows = count;
    out[e].logits.assign(logits_.begin() + first * V, logits_.begin() + (first + count) * V);
  }
}

void CpuContext::sampleRows(std::vector<StepEntry>& entries, const std::vector<int>& rowOf, int vocab, std::vector<StepOutput>& out) {
  // an exception must not leave a pool thread: each thread keeps its own and the first is rethrown
  std::vector<std::exception_ptr> failed(pool_.size());
  pool_.run([&](int ti, int nth) {
    try {
      for (size_t i = size_t(ti); i < entries.size(); i += size_t(nth)) {
        if (rowOf[i] < 0) continue;
        Sequence& s = *entries[i].seq;
        out[i].sampled = sample(logits_.data() + int64_t(rowOf[i]) * vocab, vocab, s.sampler, s.tokens, samplerScratch_[ti]);
        out[i].hasSample = true;
      }
    } catch (...) {
      failed[ti] = std::current_exception();
    }
  });
  for (auto& f : failed)
    if (f) std::rethrow_exception(f);
}

namespace {

class CpuBackend : public Backend {
 public:
  const char* name() const override { return "cpu"; }
  std::unique_ptr<ExecContext> makeContext(const Model& model, const EngineOptions& opt, KvPool&) override {
    // loadModel dequantizes FP8 weights for the CPU: its kernels have no F8_E4M3 path
    auto fp8 = [](const cpu::WeightView& w) { return w.dtype == DType::F8_E4M3; };
    bool any = fp8(model.embed) || fp8(model.lmHead);
    for (const LayerWeights& L : model.layers)
      for (const cpu::WeightView* w : {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down}) any = any || fp8(*w);
    if (any) throw WeftError(Err::UnsupportedDtype, "the cpu backend does not compute on F8_E4M3 weights (they are dequantized at load)");
    return std::make_unique<CpuContext>(model, opt);
  }
  HostBuffer parkPages(KvPool& kv, const std::vector<int>& pages) override {
    const uint64_t pb = kv.pageBytes();
    HostBuffer b;
    b.size = pages.size() * pb;
    b.data = std::shared_ptr<uint8_t>(new uint8_t[b.size ? b.size : 1], std::default_delete<uint8_t[]>());
    for (size_t i = 0; i < pages.size(); i++) std::memcpy(b.data.get() + i * pb, kv.page(pages[i]), pb);
    return b;
  }
  void restorePages(KvPool& kv, const std::vector<int>& pages, const HostBuffer& from) override {
    const uint64_t pb = kv.pageBytes();
    for (size_t i = 0; i < pages.size(); i++) std::memcpy(kv.page(pages[i]), from.data.get() + i * pb, pb);
  }
};

}  // namespace

std::unique_ptr<Backend> makeCpuBackend() { return std::make_unique<CpuBackend>(); }

}  // namespace weft
