// The KV-cache decoder gives the same next-token logits as a full forward pass over
// the prefix, at every position, for both architectures; sampling is reproducible;
// ids outside the vocabulary are refused; the arena follows the micro-batch.
#include <cmath>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "kumiko/core/error.h"
#include "kumiko/core/rng.h"
#include "kumiko/model/decoder.h"
#include "kumiko/train/sampler.h"
#include "kumiko_test_support.h"

namespace kumiko::model {
namespace {

Dims dims(bool llama) { return testing::small_dims(llama); }

class Decoder : public ::testing::TestWithParam<bool> {};

TEST_P(Decoder, MatchesFullForwardAtEveryPosition) {
  const Dims d = dims(GetParam());
  Transformer<float> model(d, 1, 20);
  model.params().initialize(9);
  std::vector<int32_t> tokens;
  for (int i = 0; i < 20; ++i) tokens.push_back(static_cast<int32_t>(rng::philox(5, 0, i)[0] % d.V));
  KvDecoder decoder(model, 20);
  std::vector<float> cached(d.V), full(d.V);
  for (int64_t t = 0; t < 20; ++t) {
    decoder.step(tokens[t], cached.data());
    model.last_logits(tokens.data(), 1, t + 1, full.data());
    double max_err = 0, max_val = 0;
    for (int64_t v = 0; v < d.V; ++v) {
      max_err = std::max(max_err, std::abs(double(cached[v]) - full[v]));
      max_val = std::max(max_val, std::abs(double(full[v])));
    }
    EXPECT_LT(max_err, 1e-5 * std::max(1.0, max_val)) << "position " << t;
  }
}

TEST_P(Decoder, SamplingIsReproducibleAndRespectsTopK) {
  const Dims d = dims(GetParam());
  Transformer<float> model(d, 1, 1);
  model.params().initialize(3);
  train::SamplingOptions o;
  o.max_new_tokens = 40;  // more than the window of 16: the cache is re-primed
  o.seed = 7;
  const auto a = train::generate(model, {1, 2, 3}, 16, o);
  const auto b = train::generate(model, {1, 2, 3}, 16, o);
  EXPECT_EQ(a, b);
  ASSERT_EQ(a.size(), 40u);
  o.seed = 8;
  EXPECT_NE(train::generate(model, {1, 2, 3}, 16, o), a);
  // top_k = 1 is greedy.
  o.top_k = 1;
  auto greedy = o;
  greedy.temperature = 0;
  EXPECT_EQ(train::generate(model, {4}, 16, o), train::generate(model, {4}, 16, greedy));
}

INSTANTIATE_TEST_SUITE_P(Arch, Decoder, ::testing::Values(false, true));

// The model refuses ids outside the vocabulary before any kernel indexes a table
// with them, and plans its arena for the micro-batch.
Dims ids_dims(bool llama) {
  Dims d = dims(llama);
  d.max_T = 16;
  return d;
}

class TransformerIds : public ::testing::TestWithParam<bool> {};

TEST_P(TransformerIds, OutOfVocabularyIdsAreRefused) {
  Transformer<float> m(ids_dims(GetParam()), 2, 8);
  m.params().initialize(3);
  std::vector<int32_t> in(16, 5), tg(16, 7);
  EXPECT_NO_THROW(m.loss(in.data(), tg.data(), 2, 8));
  for (const int32_t bad : {-1, 61, 1000}) {
    auto bad_in = in;
    bad_in[9] = bad;
    try {
      m.forward_backward(bad_in.data(), tg.data(), 2, 8, 1.0 / 16);
      FAIL() << "expected a UserError for token id " << bad;
    } catch (const UserError& e) {
      EXPECT_EQ(std::string(e.what()), "token id " + std::to_string(bad) +
                                           " at position 9 is outside the vocabulary [0, 61) of model.vocab_size");
    }
    auto bad_tg = tg;
    bad_tg[3] = bad;
    EXPECT_THROW(m.loss(in.data(), bad_tg.data(), 2, 8), UserError);
  }
}

TEST_P(TransformerIds, ArenaGrowsWithTheMicroBatch) {
  // Activations are planned for the micro-batch: twice the tokens, about twice the arena.
  const Transformer<float> small(ids_dims(GetParam()), 1, 16), large(ids_dims(GetParam()), 2, 16);
  EXPECT_GT(small.arena_bytes(), 0u);
  EXPECT_NEAR(static_cast<double>(large.arena_bytes()) / static_cast<double>(small.arena_bytes()), 2.0, 0.1);
}

INSTANTIATE_TEST_SUITE_P(Arch, TransformerIds, ::testing::Values(false, true),
                         [](const ::testing::TestParamInfo<bool>& p) { return p.param ? "llama" : "gpt2"; });

}  // namespace
}  // namespace kumiko::model
