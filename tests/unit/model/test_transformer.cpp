// The one model's own checks and planning on the CPU backend: token and target ids
// outside the vocabulary are refused before any kernel indexes a table with them,
// and the arena holds only what the layout uses.
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "kumiko/core/error.h"
#include "kumiko/model/transformer.h"

namespace kumiko::model {
namespace {

Dims dims(bool llama) {
  Dims d;
  d.llama = llama;
  d.L = 2;
  d.Hq = 4;
  d.Hkv = llama ? 2 : 4;
  d.D = 8;
  d.C = 32;
  d.F = llama ? 48 : 128;
  d.V = 61;
  d.max_T = 16;
  d.tied = !llama;
  return d;
}

class TransformerIds : public ::testing::TestWithParam<bool> {};

TEST_P(TransformerIds, OutOfVocabularyIdsAreRefused) {
  Transformer<float> m(dims(GetParam()), 2, 8);
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
  const Transformer<float> small(dims(GetParam()), 1, 16), large(dims(GetParam()), 2, 16);
  EXPECT_GT(small.arena_bytes(), 0u);
  EXPECT_NEAR(static_cast<double>(large.arena_bytes()) / static_cast<double>(small.arena_bytes()), 2.0, 0.1);
}

INSTANTIATE_TEST_SUITE_P(Arch, TransformerIds, ::testing::Values(false, true),
                         [](const ::testing::TestParamInfo<bool>& p) { return p.param ? "llama" : "gpt2"; });

}  // namespace
}  // namespace kumiko::model
