// Per-sequence sampling: parameters, a seeded random stream and penalty state.
#pragma once
#include <cstdint>
#include <unordered_map>
#include <vector>

namespace weft {

struct SamplingParams {
  float temperature = 0;        // 0: greedy
  int topK = 0;                 // 0: off
  float topP = 1;               // 1: off
  float minP = 0;               // 0: off
  float repetitionPenalty = 1;  // over every token of the sequence (prompt and output), as HF
  float presencePenalty = 0;    // over tokens sampled since these params were set, as OpenAI
  float frequencyPenalty = 0;
  uint64_t seed = 0;
  std::vector<int32_t> stopTokens;
  int logprobs = 0;  // top-n log-probabilities to return (0..20); the sampled token's always
};

// xoshiro256** seeded through splitmix64: a sequence's draws depend only on its seed.
class Rng {
 public:
  void seed(uint64_t s);
  uint64_t next();
  double uniform() { return double(next() >> 11) * (1.0 / 9007199254740992.0); }

 private:
  uint64_t s_[4] = {1, 2, 3, 4};
};

struct SamplerState {
  SamplingParams params;
  Rng rng;
  std::unordered_map<int32_t, int32_t> sampledCounts;  // for presence/frequency penalties
  uint64_t draws = 0;  // random draws taken (the CUDA sampler's counter-based stream)
};

struct SampleResult {
  int32_t token = -1;
  float logprob = 0;
  std::vector<std::pair<int32_t, float>> top;
  bool stop = false;
};

// Scratch the sampler needs, sized for the vocabulary (one per thread of a context).
struct SamplerScratch {
  std::vector<float> values;
  std::vector<int32_t> ids;
  std::vector<float> probs;
  std::vector<uint8_t> mark;  // vocab-sized, all zero between calls
};

// log(sum(exp(logits))), computed stably; `scratch` holds vocab floats.
double logSoftmaxNorm(const float* logits, int vocab, float* scratch);
// The n highest logits as (token, log-probability), highest first, the lower id first among equals;
// `ids` holds vocab ints of scratch.
void topLogprobs(const float* logits, int vocab, int n, double logNorm, int32_t* ids, std::vector<std::pair<int32_t, float>>& out);

// `logits` is modified (penalties). `history` holds every token of the sequence.
SampleResult sample(float* logits, int vocab, SamplerState& state, const std::vector<int32_t>& history,
                    SamplerScratch& scratch);

}  // namespace weft
