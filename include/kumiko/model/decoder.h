#pragma once
// Incremental decoding with a key/value cache: one token at a time, attention over
// the cached keys and values of earlier positions (O(T) per token instead of
// re-running the whole window). The model's own layers decode
// (BasicTransformer::decode); this is the sampler's handle on a model and a cache.
#include <cstdint>

#include "kumiko/model/transformer.h"

namespace kumiko::model {

class KvDecoder {
 public:
  // Caches up to `capacity` positions (for gpt2 at most max_seq_len). The model's
  // activations and cache are used: one decoder per model at a time.
  KvDecoder(Transformer<float>& model, int64_t capacity) : model_(model) { model_.begin_decoding(capacity); }

  int64_t position() const { return model_.decode_position(); }
  int64_t capacity() const { return model_.decode_capacity(); }
  void reset() { model_.begin_decoding(model_.decode_capacity()); }
  // Feeds `token` at the next position; writes the logits for the position after
  // it into `logits` [V]. KUMIKO_CHECK when the cache is full.
  void step(int32_t token, float* logits) { model_.decode(token, logits); }

 private:
  Transformer<float>& model_;
};

}  // namespace kumiko::model
