#include "kumiko/train/sampler.h"

#include <algorithm>
#include <cmath>

#include "kumiko/core/rng.h"
#include "kumiko/model/decoder.h"

namespace kumiko::train {

int32_t sample_token(const float* logits, int64_t V, const SamplingOptions& o, uint64_t index) {
  if (o.temperature <= 0) return static_cast<int32_t>(std::max_element(logits, logits + V) - logits);
  std::vector<int32_t> order(V);
  for (int64_t v = 0; v < V; ++v) order[v] = static_cast<int32_t>(v);
  const int64_t k = o.top_k > 0 ? std::min<int64_t>(o.top_k, V) : V;
  std::partial_sort(order.begin(), order.begin() + k, order.end(),
                    [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });
  std::vector<double> p(k);
  double sum = 0;
  for (int64_t j = 0; j < k; ++j) sum += p[j] = std::exp((logits[order[j]] - logits[order[0]]) / o.temperature);
  double u = rng::uniform(rng::stream_key(o.seed, "sample"), index) * sum;
  for (int64_t j = 0; j < k; ++j)
    if ((u -= p[j]) <= 0) return order[j];
  return order[k - 1];
}

std::vector<int32_t> generate(model::Transformer<float>& model, const std::vector<int32_t>& prompt,
                              int64_t window, const SamplingOptions& o) {
  KUMIKO_CHECK(!prompt.empty(), "generate: empty prompt");
  const int64_t V = model.dims().V;
  model::KvDecoder decoder(model, window);
  std::vector<int32_t> all(prompt);
  std::vector<float> logits(V);
  // Prime with the last `window` prompt tokens.
  const int64_t start = std::max<int64_t>(0, static_cast<int64_t>(all.size()) - window);
  for (size_t i = static_cast<size_t>(start); i < all.size(); ++i) decoder.step(all[i], logits.data());
  for (int i = 0; i < o.max_new_tokens; ++i) {
    const int32_t next = sample_token(logits.data(), V, o, static_cast<uint64_t>(i));
    all.push_back(next);
    if (decoder.position() == decoder.capacity()) {  // full: keep the last half window
      decoder.reset();
      for (size_t j = all.size() - static_cast<size_t>(window / 2); j < all.size(); ++j)
        decoder.step(all[j], logits.data());
    } else {
      decoder.step(next, logits.data());
    }
  }
  return std::vector<int32_t>(all.begin() + static_cast<int64_t>(prompt.size()), all.end());
}

}  // namespace kumiko::train
