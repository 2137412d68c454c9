#include "sampler.h"

#include <algorithm>
#include <cmath>

#include "cpu/simd.h"

namespace weft {

void Rng::seed(uint64_t s) {
  for (auto& w : s_) {  // splitmix64
    s += 0x9e3779b97f4a7c15ull;
    uint64_t z = s;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    w = z ^ (z >> 31);
  }
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t Rng::next() {
  const uint64_t result = rotl(s_[1] * 5, 7) * 9;
  const uint64_t t = s_[1] << 17;
  s_[2] ^= s_[0];
  s_[3] ^= s_[1];
  s_[1] ^= s_[2];
  s_[0] ^= s_[3];
  s_[2] ^= t;
  s_[3] = rotl(s_[3], 45);
  return result;
}

namespace {

// Highest logit first; the lower id first among equals (so results never depend on sort internals).
struct ByLogit {
  const float* l;
  bool operator()(int32_t a, int32_t b) const { return l[a] > l[b] || (l[a] == l[b] && a < b); }
};

// out[i] = exp((l[i] - top) * scale) (all arguments <= 0), returning their sum accumulated per
// vector lane block in a fixed order (so the same logits always give the same sum).
double expShifted(const float* l, int n, float top, float scale, float* out) {
  using namespace simd;
  const vf vtop = set1(top), vscale = set1(scale);
  double total = 0;
  int i = 0;
  for (; i + VL <= n; i += VL) {
    vf e = expNonPositive(mul(sub(load(l + i), vtop), vscale));
    store(out + i, e);
    total += sum(e);
  }
  for (; i < n; i++) {
    out[i] = std::exp((l[i] - top) * scale);
    total += out[i];
  }
  return total;
}

int32_t argmax(const float* l, int vocab) {
  int32_t best = 0;
  for (int i = 1; i < vocab; i++)
    if (l[i] > l[best]) best = i;
  return best;
}

}  // namespace

double logSoftmaxNorm(const float* logits, int vocab, float* scratch) {
  const float top = *std::max_element(logits, logits + vocab);
  return top + std::log(expShifted(logits, vocab, top, 1.0f, scratch));
}

void topLogprobs(const float* logits, int vocab, int n, double logNorm, int32_t* ids, std::vector<std::pair<int32_t, float>>& out) {
  for (int i = 0; i < vocab; i++) ids[i] = i;
  const int k = std::min(n, vocab);
  std::partial_sort(ids, ids + k, ids + vocab, ByLogit{logits});
  for (int i = 0; i < k; i++) out.emplace_back(ids[i], float(double(logits[ids[i]]) - logNorm));
}

SampleResult sample(float* logits, int vocab, SamplerState& state, const std::vector<int32_t>& history,
                    SamplerScratch& scratch) {
  const SamplingParams& p = state.params;
  SampleResult res;
  scratch.values.resize(vocab);
  scratch.ids.resize(vocab);
  scratch.probs.resize(vocab);
  float* raw = scratch.values.data();
  float* prob = scratch.probs.data();
  std::copy(logits, logits + vocab, raw);

  // log-softmax normalizer of the model's own distribution (before penalties and temperature)
  const double logNorm = logSoftmaxNorm(raw, vocab, prob);

  // penalties
  if (p.repetitionPenalty != 1.0f) {  // once per distinct token of the history
    scratch.mark.resize(vocab, 0);
    for (int32_t t : history) {
      if (scratch.mark[t]) continue;
      scratch.mark[t] = 1;
      logits[t] = logits[t] > 0 ? logits[t] / p.repetitionPenalty : logits[t] * p.repetitionPenalty;
    }
    for (int32_t t : history) scratch.mark[t] = 0;
  }
  if (p.presencePenalty != 0 || p.frequencyPenalty != 0) {
    for (const auto& [id, count] : state.sampledCounts) logits[id] -= p.presencePenalty + p.frequencyPenalty * float(count);
  }

  int32_t chosen;
  if (p.temperature <= 0 || p.topK == 1) {
    chosen = argmax(logits, vocab);
  } else {
    int32_t* ids = scratch.ids.data();
    for (int i = 0; i < vocab; i++) ids[i] = i;
    ByLogit by{logits};
    const double invT = 1.0 / p.temperature;
    int n = vocab;
    bool sorted = false;
    if (p.topK > 0 && p.topK < vocab) {
      n = p.topK;
      std::nth_element(ids, ids + n - 1, ids + vocab, by);
      std::sort(ids, ids + n, by);
      sorted = true;
    }
    const float top = sorted ? logits[ids[0]] : *std::max_element(logits, logits + vocab);
    // prob[id]: unnormalized probability at this temperature
    double mass = expShifted(logits, vocab, top, float(invT), prob);
    if (n < vocab) {  // top-k: only the candidates count
      mass = 0;
      for (int i = 0; i < n; i++) mass += prob[ids[i]];
    }
    if (p.topP < 1.0f) {
      const double want = double(p.topP) * mass;
      if (!sorted) {  // sort the head first; fall back to a full sort only when it holds too little mass
        int head = std::min(n, 1024);
        std::partial_sort(ids, ids + head, ids + n, by);
        double cum = 0;
        for (int i = 0; i < head; i++) cum += prob[ids[i]];
        if (cum < want && head < n) std::sort(ids + head, ids + n, by);
        sorted = true;
      }
      double cum = 0;
      int keep = 0;
      while (keep < n) {
        cum += prob[ids[keep]];
        keep++;
        if (cum >= want) break;
      }
      n = keep;
      mass = cum;
    }
    if (p.minP > 0) {  // keep tokens whose probability is at least minP x the top one's
      const double floorLogit = top + std::log(double(p.minP)) * p.temperature;
      int w = 0;
      double kept = 0;
      for (int i = 0; i < n; i++)
        if (logits[ids[i]] >= floorLogit) {
          ids[w++] = ids[i];
          kept += prob[ids[i]];
        }
      n = w;
      mass = kept;
    }
    double u = state.rng.uniform() * mass;
    chosen = ids[n - 1];
    for (int i = 0; i < n; i++) {
      u -= prob[ids[i]];
      if (u < 0) { chosen = ids[i]; break; }
    }
  }

  res.token = chosen;
  res.logprob = float(double(raw[chosen]) - logNorm);
  if (p.logprobs > 0) topLogprobs(raw, vocab, p.logprobs, logNorm, scratch.ids.data(), res.top);
  state.sampledCounts[chosen]++;
  res.stop = std::find(p.stopTokens.begin(), p.stopTokens.end(), chosen) != p.stopTokens.end();
  return res;
}

}  // namespace weft
