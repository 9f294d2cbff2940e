#pragma once
// Text generation from a model: temperature and top-k sampling with a counter-based
// RNG (the same seed gives the same text), decoding with the KV cache.
#include <cstdint>
#include <vector>

#include "kumiko/model/transformer.h"

namespace kumiko::train {

struct SamplingOptions {
  int max_new_tokens = 200;
  double temperature = 0.8;  // 0 = greedy
  int top_k = 40;            // 0 = the whole vocabulary
  uint64_t seed = 1;
};

// The `index`-th sampled token from logits [V] (a pure function of seed and index).
int32_t sample_token(const float* logits, int64_t V, const SamplingOptions& o, uint64_t index);

// Returns the new tokens continuing `prompt` (which must not be empty). Attention
// looks back at most `window` tokens: when the cache is full it is primed again
// with the last window/2 tokens.
std::vector<int32_t> generate(model::Transformer<float>& model, const std::vector<int32_t>& prompt,
                              int64_t window, const SamplingOptions& o);

}  // namespace kumiko::train
