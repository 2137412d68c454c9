#include "engine.h"

#include <algorithm>
#include <cmath>
#include <exception>
#include <string>

namespace weft {

using cpu::gemm;

static int64_t ceilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

ExecContext::ExecContext(const Model& model, const EngineOptions& opt) : opt_(opt), pool_(opt.numThreads) {
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

void ExecContext::forward(const Model& model, KvPool& kv, std::vector<StepEntry>& entries, std::vector<StepOutput>& out) {
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

Engine::Engine(std::unique_ptr<Model> model, const EngineOptions& opt) : model_(std::move(model)), opt_(opt) {
  const ModelConfig& c = model_->cfg;
  auto need = [](bool ok, const std::string& what) {
    if (!ok) throw WeftError(Err::BadArgument, what);
  };
  need(opt_.numContexts >= 1 && opt_.numContexts <= 64, "contexts must be in 1..64");
  need(opt_.numThreads >= 1 && opt_.numThreads <= 256, "threads must be in 1..256");
  need(opt_.numThreads * opt_.numContexts <= 1024, "contexts x threads must be at most 1024");
  need(opt_.maxBatchTokens >= 1 && opt_.maxBatchTokens <= 65536, "maxBatchTokens must be in 1..65536");
  need(opt_.maxBatchSequences >= 1 && opt_.maxBatchSequences <= 4096, "maxBatchSequences must be in 1..4096");
  need(opt_.maxLogitRows >= 1 && opt_.maxLogitRows <= 4096, "maxLogitRows must be in 1..4096");
  need(opt_.kvPageTokens >= 1 && opt_.kvPageTokens <= 4096, "kvPageTokens must be in 1..4096");
  // the logits buffer is the largest per-context allocation: keep each under 4 GiB
  need(uint64_t(opt_.maxLogitRows) * uint64_t(c.vocab) * 4 <= (4ull << 30), "maxLogitRows x vocab x 4 bytes must be at most 4 GiB");
  need(opt_.maxContext >= 0, "maxContext must not be negative");
  maxContext_ = opt_.maxContext > 0 ? std::min(opt_.maxContext, c.maxPositions) : c.maxPositions;
  opt_.maxContext = maxContext_;
  kv_ = std::make_unique<KvPool>(c.numLayers, c.numKvHeads, c.headDim, opt_.kvPageTokens, opt_.kvDtype, opt_.kvMemoryBytes);
  for (int i = 0; i < opt_.numContexts; i++) contexts_.push_back(std::make_unique<ExecContext>(*model_, opt_));
}

int Engine::numBusyContexts() const {
  int n = 0;
  for (const auto& c : contexts_) n += c->busy ? 1 : 0;
  return n;
}

int64_t Engine::createSequence() {
  auto s = std::make_unique<Sequence>();
  s->id = nextId_++;
  const int64_t id = s->id;
  seqs_[id] = std::move(s);
  return id;
}

Sequence& Engine::get(int64_t id) {
  auto it = seqs_.find(id);
  if (it == seqs_.end()) throw WeftError(Err::SequenceNotFound, "sequence " + std::to_string(id) + " does not exist (freed?)", id);
  return *it->second;
}

static void requireIdle(const Sequence& s) {
  if (s.busy) throw WeftError(Err::SequenceBusy, "sequence " + std::to_string(s.id) + " is in a step in flight", s.id);
}

void Engine::freeSequence(int64_t id) {
  Sequence& s = get(id);
  requireIdle(s);
  kv_->release(s.pages.data(), int(s.pages.size()));
  seqs_.erase(id);
}

void Engine::releaseTail(Sequence& s, int keepTokens) {
  const size_t keepPages = size_t(ceilDiv(keepTokens, kv_->pageTokens()));
  if (s.pages.size() > keepPages) {
    kv_->release(s.pages.data() + keepPages, int(s.pages.size() - keepPages));
    s.pages.resize(keepPages);
  }
}

void Engine::truncate(int64_t id, int numTokens) {
  Sequence& s = get(id);
  requireIdle(s);
  if (s.parked) throw WeftError(Err::SequenceParked, "sequence " + std::to_string(id) + " is parked", id);
  if (numTokens < 0 || numTokens > s.numTokens)
    throw WeftError(Err::BadArgument, "truncate: " + std::to_string(numTokens) + " is outside 0.." + std::to_string(s.numTokens), id);
  s.numTokens = numTokens;
  s.tokens.resize(numTokens);
  releaseTail(s, numTokens);
}

void Engine::park(int64_t id) {
  Sequence& s = get(id);
  requireIdle(s);
  if (s.parked) return;
  const uint64_t pb = kv_->pageBytes();
  s.parkedKv.resize(s.pages.size() * pb);
  for (size_t i = 0; i < s.pages.size(); i++) std::memcpy(s.parkedKv.data() + i * pb, kv_->page(s.pages[i]), pb);
  kv_->release(s.pages.data(), int(s.pages.size()));
  s.pages.clear();
  s.parked = true;
}

void Engine::restore(int64_t id) {
  Sequence& s = get(id);
  requireIdle(s);
  if (!s.parked) return;
  const uint64_t pb = kv_->pageBytes();
  const int n = int(s.parkedKv.size() / pb);
  kv_->allocate(n, s.pages);
  for (int i = 0; i < n; i++) std::memcpy(kv_->page(s.pages[i]), s.parkedKv.data() + i * pb, pb);
  s.parkedKv.clear();
  s.parkedKv.shrink_to_fit();
  s.parked = false;
}

void Engine::setSampling(int64_t id, const SamplingParams& p) {
  Sequence& s = get(id);
  requireIdle(s);
  auto bad = [&](const std::string& what) { throw WeftError(Err::BadArgument, "sampling: " + what, id); };
  if (!(p.temperature >= 0) || !std::isfinite(p.temperature)) bad("temperature must be a finite number >= 0");
  if (p.topK < 0) bad("top_k must be >= 0");
  if (!(p.topP > 0 && p.topP <= 1)) bad("top_p must be in (0, 1]");
  if (!(p.minP >= 0 && p.minP <= 1)) bad("min_p must be in [0, 1]");
  // bounded so that penalized logits stay finite
  if (!(p.repetitionPenalty >= 0.01f && p.repetitionPenalty <= 100)) bad("repetition_penalty must be in [0.01, 100]");
  if (!(p.presencePenalty >= -100 && p.presencePenalty <= 100)) bad("presence_penalty must be in [-100, 100]");
  if (!(p.frequencyPenalty >= -100 && p.frequencyPenalty <= 100)) bad("frequency_penalty must be in [-100, 100]");
  if (p.logprobs < 0 || p.logprobs > 20) bad("logprobs must be in 0..20");
  for (int32_t t : p.stopTokens)
    if (t < 0 || t >= model_->cfg.vocab) throw WeftError(Err::TokenOutOfRange, "stop token " + std::to_string(t) + " is outside the vocabulary", id);
  s.sampler.params = p;
  s.sampler.rng.seed(p.seed);
  s.sampler.sampledCounts.clear();
}

void Engine::prepare(int ctx, std::vector<StepEntry>& entries) {
  if (ctx < 0 || ctx >= int(contexts_.size())) throw WeftError(Err::BadArgument, "context " + std::to_string(ctx) + " does not exist");
  if (contexts_[ctx]->busy) throw WeftError(Err::ContextBusy, "context " + std::to_string(ctx) + " is running a step");
  if (entries.empty()) throw WeftError(Err::BadArgument, "a step needs at least one sequence");
  if (int(entries.size()) > opt_.maxBatchSequences)
    throw WeftError(Err::BatchTooLarge, "step has " + std::to_string(entries.size()) + " sequences, the limit is " + std::to_string(opt_.maxBatchSequences));
  int64_t tokens = 0, rows = 0, pages = 0;
  const int PT = kv_->pageTokens();
  for (size_t i = 0; i < entries.size(); i++) {
    StepEntry& e = entries[i];
    Sequence& s = *e.seq;
    for (size_t j = 0; j < i; j++)
      if (entries[j].seq == e.seq) throw WeftError(Err::BadArgument, "sequence " + std::to_string(s.id) + " appears twice in one step", s.id);
    if (s.parked) throw WeftError(Err::SequenceParked, "sequence " + std::to_string(s.id) + " is parked; restore it first", s.id);
    requireIdle(s);
    if (e.tokens.empty()) throw WeftError(Err::BadArgument, "sequence " + std::to_string(s.id) + ": no tokens", s.id);
    for (int32_t t : e.tokens)
      if (t < 0 || t >= model_->cfg.vocab)
        throw WeftError(Err::TokenOutOfRange, "token id " + std::to_string(t) + " is outside the vocabulary (0.." + std::to_string(model_->cfg.vocab - 1) + ")", s.id);
    if (int64_t(s.numTokens) + int64_t(e.tokens.size()) > maxContext_)
      throw WeftError(Err::ContextOverflow, "sequence " + std::to_string(s.id) + " would hold " + std::to_string(s.numTokens + e.tokens.size()) +
                                                " tokens, the context limit is " + std::to_string(maxContext_), s.id);
    tokens += int64_t(e.tokens.size());
    rows += e.logits == LogitsMode::All ? int64_t(e.tokens.size()) : (e.logits == LogitsMode::Last || e.sample ? 1 : 0);
    pages += ceilDiv(s.numTokens + int64_t(e.tokens.size()), PT) - int64_t(s.pages.size());
  }
  if (tokens > opt_.maxBatchTokens)
    throw WeftError(Err::BatchTooLarge, "step has " + std::to_string(tokens) + " tokens, the context was sized for " + std::to_string(opt_.maxBatchTokens));
  if (rows > opt_.maxLogitRows)
    throw WeftError(Err::BatchTooLarge, "step asks for " + std::to_string(rows) + " rows of logits, the limit is " + std::to_string(opt_.maxLogitRows));
  if (pages > kv_->numFree())
    throw WeftError(Err::KvExhausted, "KV cache exhausted: the step needs " + std::to_string(pages) + " pages, " +
                                          std::to_string(kv_->numFree()) + " of " + std::to_string(kv_->numPages()) + " are free");
  for (StepEntry& e : entries) {
    Sequence& s = *e.seq;
    e.newPages = int(ceilDiv(s.numTokens + int64_t(e.tokens.size()), PT) - int64_t(s.pages.size()));
    if (e.newPages > 0) kv_->allocate(e.newPages, s.pages);
    e.startPos = s.numTokens;
    s.busy = true;
  }
  contexts_[ctx]->busy = true;
}

void Engine::execute(int ctx, std::vector<StepEntry>& entries, std::vector<StepOutput>& out) {
  ExecContext& cx = *contexts_[ctx];
  cx.forward(*model_, *kv_, entries, out);
  // Commit: the step's tokens are now cached.
  for (StepEntry& e : entries) {
    Sequence& s = *e.seq;
    s.tokens.insert(s.tokens.end(), e.tokens.begin(), e.tokens.end());
    s.numTokens += int(e.tokens.size());
  }
  // Sample from the last row of each entry that asked (logits were copied out first). Should
  // sampling fail (out of memory), the commit above is undone so that the step changes nothing.
  const int V = model_->cfg.vocab;
  std::vector<int> rowOf(entries.size(), -1);
  int r = 0;
  for (size_t i = 0; i < entries.size(); i++) {
    const StepEntry& e = entries[i];
    if (e.logits == LogitsMode::All) r += int(e.tokens.size());
    else if (e.logits == LogitsMode::Last || e.sample) r += 1;
    if (e.sample) rowOf[i] = r - 1;
  }
  try {
    cx.sampleRows(entries, rowOf, V, out);
  } catch (...) {
    for (StepEntry& e : entries) {
      e.seq->numTokens -= int(e.tokens.size());
      e.seq->tokens.resize(e.seq->numTokens);
    }
    throw;
  }
}

void Engine::finish(int ctx, std::vector<StepEntry>& entries, bool ok) {
  for (StepEntry& e : entries) {
    Sequence& s = *e.seq;
    if (!ok) releaseTail(s, s.numTokens);
    s.busy = false;
  }
  contexts_[ctx]->busy = false;
}

void ExecContext::sampleRows(std::vector<StepEntry>& entries, const std::vector<int>& rowOf, int vocab, std::vector<StepOutput>& out) {
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

}  // namespace weft
