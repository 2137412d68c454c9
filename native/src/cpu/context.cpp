#include "context.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <exception>

namespace weft {

using cpu::gemm;

static int64_t ceilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

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
  cos_.resize(T * c.headDim / 2);
  sin_.resize(T * c.headDim / 2);
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
}

void CpuContext::forward(const Model& model, KvPool& kv, std::vector<StepEntry>& entries, std::vector<StepOutput>& out) {
  const ModelConfig& c = model.cfg;
  const int64_t H = c.hidden, D = c.headDim, half = D / 2, F = c.ffn, V = c.vocab;
  const int nh = c.numHeads, nkv = c.numKvHeads, group = nh / nkv;
  const int64_t qDim = int64_t(nh) * D, kvDim = int64_t(nkv) * D;
  const int PT = kv.pageTokens();
  const int64_t kvElt = int64_t(dtypeSize(kv.dtype()));

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

  // Embeddings and this step's RoPE angles.
  pool_.run([&](int ti, int nth) {
    int64_t t0, t1;
    ThreadPool::chunk(T, 1, ti, nth, t0, t1);
    for (int64_t t = t0; t < t1; t++) {
      cpu::loadRow(model.embed, tok_[t], x_.data() + t * H);
      for (int64_t i = 0; i < half; i++) {
        const double a = double(pos_[t]) * model.invFreq[i];
        cos_[t * half + i] = float(std::cos(a));
        sin_[t * half + i] = float(std::sin(a));
      }
    }
  });

  const float scale = 1.0f / std::sqrt(float(D));
  for (int l = 0; l < c.numLayers; l++) {
    const LayerWeights& L = model.layers[l];
    auto normRows = [&](const std::vector<float>& w) {
      pool_.run([&](int ti, int nth) {
        int64_t t0, t1;
        ThreadPool::chunk(T, 1, ti, nth, t0, t1);
        for (int64_t t = t0; t < t1; t++) cpu::rmsnorm(x_.data() + t * H, w.data(), c.rmsEps, H, xb_.data() + t * H);
      });
    };
    // attention input norm, then the q/k/v projections (one parallel region for all three)
    normRows(L.inputNorm);
    pool_.run([&](int ti, int nth) {
      int64_t n0, n1;
      ThreadPool::chunk(qDim, cpu::kPanelRows, ti, nth, n0, n1);
      gemm(xb_.data(), T, H, L.q, n0, n1, q_.data(), qDim, L.qBias.empty() ? nullptr : L.qBias.data(), false);
      ThreadPool::chunk(kvDim, cpu::kPanelRows, ti, nth, n0, n1);
      gemm(xb_.data(), T, H, L.k, n0, n1, k_.data(), kvDim, L.kBias.empty() ? nullptr : L.kBias.data(), false);
      gemm(xb_.data(), T, H, L.v, n0, n1, v_.data(), kvDim, L.vBias.empty() ? nullptr : L.vBias.data(), false);
    });
    // RoPE on q and k, then k and v into each token's KV page slot
    pool_.run([&](int ti, int nth) {
      int64_t t0, t1;
      ThreadPool::chunk(T, 1, ti, nth, t0, t1);
      for (int64_t t = t0; t < t1; t++) {
        cpu::rope(q_.data() + t * qDim, nh, int(D), cos_.data() + t * half, sin_.data() + t * half);
        cpu::rope(k_.data() + t * kvDim, nkv, int(D), cos_.data() + t * half, sin_.data() + t * half);
        const Sequence& s = *entries[seqOf_[t]].seq;
        const int page = s.pages[pos_[t] / PT], slot = pos_[t] % PT;
        for (int g = 0; g < nkv; g++) {
          cpu::storeKv(k_.data() + t * kvDim + g * D, kv.block(page, l, 0, g) + slot * D * kvElt, kv.dtype(), D);
          cpu::storeKv(v_.data() + t * kvDim + g * D, kv.block(page, l, 1, g) + slot * D * kvElt, kv.dtype(), D);
        }
      }
    });
    // causal attention over each token's own sequence: positions 0..pos
    pool_.run([&](int ti, int nth) {
      int64_t w0, w1;
      ThreadPool::chunk(T * nkv, 1, ti, nth, w0, w1);
      auto& pk = pageK_[ti];
      auto& pv = pageV_[ti];
      for (int64_t w = w0; w < w1; w++) {
        const int64_t t = w / nkv;
        const int g = int(w % nkv);
        const Sequence& s = *entries[seqOf_[t]].seq;
        const int64_t numPos = pos_[t] + 1;
        const int64_t numPages = ceilDiv(numPos, PT);
        for (int64_t p = 0; p < numPages; p++) {
          pk[p] = kv.block(s.pages[p], l, 0, g);
          pv[p] = kv.block(s.pages[p], l, 1, g);
        }
        cpu::KvAccessor acc{pk.data(), pv.data(), PT, D, kv.dtype()};
        const int64_t off = t * qDim + int64_t(g) * group * D;
        cpu::attendGroup(q_.data() + off, group, acc, numPos, scale, att_.data() + off, scores_[ti].data());
      }
    });
    // output projection, added into the residual stream
    pool_.run([&](int ti, int nth) {
      int64_t n0, n1;
      ThreadPool::chunk(H, cpu::kPanelRows, ti, nth, n0, n1);
      gemm(att_.data(), T, qDim, L.o, n0, n1, x_.data(), H, nullptr, true);
    });
    // MLP: norm, gate and up with SwiGLU applied to each thread's columns while still in cache
    normRows(L.postNorm);
    pool_.run([&](int ti, int nth) {
      int64_t n0, n1;
      ThreadPool::chunk(F, cpu::kPanelRows, ti, nth, n0, n1);
      if (n0 >= n1) return;
      gemm(xb_.data(), T, H, L.gate, n0, n1, gate_.data(), F, nullptr, false);
      gemm(xb_.data(), T, H, L.up, n0, n1, up_.data(), F, nullptr, false);
      for (int64_t t = 0; t < T; t++) {
        float* g = gate_.data() + t * F + n0;
        cpu::siluMul(g, up_.data() + t * F + n0, n1 - n0, g);
      }
    });
    pool_.run([&](int ti, int nth) {
      int64_t n0, n1;
      ThreadPool::chunk(H, cpu::kPanelRows, ti, nth, n0, n1);
      gemm(gate_.data(), T, F, L.down, n0, n1, x_.data(), H, nullptr, true);
    });
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
    gemm(logitIn_.data(), R, H, model.lmHead, n0, n1, logits_.data(), V, nullptr, false);
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
