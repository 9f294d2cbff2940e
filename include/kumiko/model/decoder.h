#pragma once
// Incremental decoding with a key/value cache: one token at a time, attention over
// the cached keys and values of earlier positions (O(T) per token instead of
// re-running the whole window). Uses the model's parameters by name.
#include <cstdint>
#include <vector>

#include "kumiko/core/tensor.h"
#include "kumiko/model/transformer.h"

namespace kumiko::model {

class KvDecoder {
 public:
  // Caches up to `capacity` positions (for gpt2 at most max_seq_len).
  KvDecoder(const Transformer<float>& model, int64_t capacity);

  int64_t position() const { return pos_; }
  int64_t capacity() const { return capacity_; }
  void reset() { pos_ = 0; }
  // Feeds `token` at the next position; writes the logits for the position after
  // it into `logits` [V]. KUMIKO_CHECK when the cache is full.
  void step(int32_t token, float* logits);

 private:
  const ParameterStore<float>& p_;
  Dims d_;
  int64_t capacity_;
  int64_t pos_ = 0;
  std::vector<Tensor<float>> k_, v_;  // per layer [capacity, Hkv * D]
  Tensor<float> x_, h_, qkv_, att_, mid_, f1_, f2_, fa_, stats_, stats2_;
};

}  // namespace kumiko::model
