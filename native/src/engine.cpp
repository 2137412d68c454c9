#include "engine.h"

#include "cpu/context.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <exception>
#include <string>

namespace weft {

static int64_t ceilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

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
  backend_ = opt_.backend == BackendKind::Cuda ? makeCudaBackend(*model_, opt_) : makeCpuBackend();
  kv_ = std::make_unique<KvPool>(c.numLayers, c.numKvHeads, c.headDim, opt_.kvPageTokens, opt_.kvDtype,
                                 backend_->kvBudget(opt_.kvMemoryBytes), backend_->kvInHostMemory());
  backend_->attachKv(*kv_);
  for (int i = 0; i < opt_.numContexts; i++) contexts_.push_back(backend_->makeContext(*model_, opt_, *kv_));
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
  if (s.busy) {
    // part of a step that timed out on the device: freed once its context drains (reapStuck)
    for (const auto& [ctx, entries] : stuck_)
      for (const StepEntry& e : entries)
        if (e.seq == &s) {
          freeWhenReaped_.insert(id);
          return;
        }
  }
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
  s.parkedKv = backend_->parkPages(*kv_, s.pages);
  kv_->release(s.pages.data(), int(s.pages.size()));
  s.pages.clear();
  s.parked = true;
}

void Engine::restore(int64_t id) {
  Sequence& s = get(id);
  requireIdle(s);
  if (!s.parked) return;
  const int n = int(s.parkedKv.size / kv_->pageBytes());
  kv_->allocate(n, s.pages);
  try {
    backend_->restorePages(*kv_, s.pages, s.parkedKv);
  } catch (...) {
    kv_->release(s.pages.data(), n);
    s.pages.clear();
    throw;
  }
  s.parkedKv = HostBuffer{};
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
  s.sampler.draws = 0;
}

void Engine::prepare(int ctx, std::vector<StepEntry>& entries) {
  if (ctx < 0 || ctx >= int(contexts_.size())) throw WeftError(Err::BadArgument, "context " + std::to_string(ctx) + " does not exist");
  reapStuck();
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
  // before any claim: should it fail (a device error), nothing is left claimed
  contexts_[ctx]->beforeStep();
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

void Engine::finish(int ctx, std::vector<StepEntry>& entries, bool ok, bool stuck) {
  if (stuck && !ok) {
    // the step's work may still run and write its KV pages: sequences, pages and context stay
    // claimed until the context drains (reapStuck)
    stuck_[ctx] = entries;
    return;
  }
  for (StepEntry& e : entries) {
    Sequence& s = *e.seq;
    if (!ok) releaseTail(s, s.numTokens);
    s.busy = false;
  }
  contexts_[ctx]->busy = false;
}

bool Engine::reapStuck(int ctx) {
  for (auto it = stuck_.begin(); it != stuck_.end();) {
    if (contexts_[it->first]->drained()) {
      const int c = it->first;
      std::vector<StepEntry> entries = std::move(it->second);
      it = stuck_.erase(it);
      finish(c, entries, false);
      for (const StepEntry& e : entries)
        if (freeWhenReaped_.erase(e.seq->id)) freeSequence(e.seq->id);
    } else {
      ++it;
    }
  }
  if (ctx < 0) return stuck_.empty();
  if (ctx >= int(contexts_.size())) throw WeftError(Err::BadArgument, "context " + std::to_string(ctx) + " does not exist");
  return stuck_.count(ctx) == 0;
}

void Engine::injectFault(int ctx, const std::string& kind) {
  const char* on = std::getenv("WEFT_FAULT_INJECTION");
  if (!on || std::string(on) != "1") throw WeftError(Err::BadArgument, "fault injection is a test hook: set WEFT_FAULT_INJECTION=1");
  if (ctx < 0 || ctx >= int(contexts_.size())) throw WeftError(Err::BadArgument, "context " + std::to_string(ctx) + " does not exist");
  contexts_[ctx]->injectFault(kind);
}

void Engine::releaseFault(int ctx) {
  if (ctx < 0 || ctx >= int(contexts_.size())) throw WeftError(Err::BadArgument, "context " + std::to_string(ctx) + " does not exist");
  contexts_[ctx]->releaseFault();
}

}  // namespace weft

#ifndef WEFT_HAVE_CUDA
namespace weft {
std::unique_ptr<Backend> makeCudaBackend(const Model&, const EngineOptions&) {
  throw WeftError(Err::BackendUnavailable, "this build of weft has no CUDA backend (rebuild with the CUDA toolkit present, or WEFT_CUDA=1)");
}
int cudaDeviceCount() { return 0; }
double cudaCopyBandwidth(int, uint64_t) { throw WeftError(Err::BackendUnavailable, "this build of weft has no CUDA backend"); }
void cudaMemInfo(int, uint64_t&, uint64_t&) { throw WeftError(Err::BackendUnavailable, "this build of weft has no CUDA backend"); }
}  // namespace weft
#endif
