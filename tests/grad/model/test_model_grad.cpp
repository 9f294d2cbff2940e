// Every layer's backward, through the whole model, against central finite
// differences of the forward in double precision, for both architectures.
#include <cmath>
#include <cstring>
#include <random>

#include <gtest/gtest.h>

#include "kumiko/core/rng.h"
#include "kumiko/model/transformer.h"

namespace kumiko::model {
namespace {

Dims tiny_dims(bool llama, bool tied) {
  Dims d;
  d.llama = llama;
  d.L = 2;
  d.Hq = 4;
  d.Hkv = llama ? 2 : 4;
  d.D = 4;
  d.C = 16;
  d.F = llama ? 24 : 32;
  d.V = 23;
  d.max_T = 8;
  d.tied = tied;
  return d;
}

struct Batch {
  std::vector<int32_t> inputs, targets;
};

Batch random_batch(int64_t B, int64_t T, int64_t V, uint32_t seed) {
  std::mt19937 gen(seed);
  std::uniform_int_distribution<int32_t> tok(0, static_cast<int32_t>(V - 1));
  Batch b;
  for (int64_t i = 0; i < B * T; ++i) {
    b.inputs.push_back(tok(gen));
    b.targets.push_back(tok(gen));
  }
  return b;
}

// Random values for every parameter (norm weights around 1, everything else
// around 0 with a large enough scale that no gradient is negligible).
void randomize(ParameterStore<double>& p, uint32_t seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<double> n(0.0, 0.3);
  for (size_t i = 0; i < p.size(); ++i) {
    double* v = p.value(static_cast<int>(i));
    const bool ones = p.spec(static_cast<int>(i)).init == Init::ones;
    for (int64_t j = 0; j < p.numel(static_cast<int>(i)); ++j) v[j] = (ones ? 1.0 : 0.0) + n(gen);
  }
}

void check_model(bool llama, bool tied) {
  const Dims d = tiny_dims(llama, tied);
  const int64_t B = 2, T = 7;
  Transformer<double> model(d, B, T);
  auto& p = model.params();
  randomize(p, 7);
  const Batch batch = random_batch(B, T, d.V, 11);
  p.zero_grads();
  model.forward_backward(batch.inputs.data(), batch.targets.data(), B, T, 1.0 / (B * T));

  std::mt19937 gen(3);
  const double h = 1e-5;
  for (size_t i = 0; i < p.size(); ++i) {
    const int idx = static_cast<int>(i);
    const int64_t n = p.numel(idx);
    std::uniform_int_distribution<int64_t> pick(0, n - 1);
    double max_err = 0;
    for (int k = 0; k < 6; ++k) {
      const int64_t j = pick(gen);
      double* w = p.value(idx) + j;
      const double saved = *w;
      *w = saved + h;
      const double up = model.loss(batch.inputs.data(), batch.targets.data(), B, T);
      *w = saved - h;
      const double down = model.loss(batch.inputs.data(), batch.targets.data(), B, T);
      *w = saved;
      const double numeric = (up - down) / (2 * h);
      const double analytic = p.grad(idx)[j];
      // Relative error with an absolute floor for gradients near zero (the FD
      // round-off is ~1e-11 absolute here).
      const double err = std::abs(numeric - analytic) / (std::max(std::abs(numeric), std::abs(analytic)) + 1e-5);
      max_err = std::max(max_err, err);
    }
    EXPECT_LT(max_err, 1e-6) << (llama ? "llama " : "gpt2 ") << p.spec(idx).name;
  }
}

TEST(ModelGrad, Gpt2Tied) { check_model(false, true); }
TEST(ModelGrad, Gpt2Untied) { check_model(false, false); }
TEST(ModelGrad, LlamaUntied) { check_model(true, false); }
TEST(ModelGrad, LlamaTied) { check_model(true, true); }

// The parameter list follows the documented names and shapes.
TEST(ModelSpecs, NamesAndShapes) {
  const Dims g = tiny_dims(false, true);
  const auto specs = parameter_specs(g);
  EXPECT_EQ(specs.front().name, "embed.tokens.weight");
  EXPECT_EQ(specs[1].name, "embed.positions.weight");
  bool found = false;
  for (const auto& s : specs)
    if (s.name == "blocks.1.attn.qkv.weight") {
      found = true;
      EXPECT_EQ(s.shape, (Shape{g.qkv_width(), g.C}));
      EXPECT_TRUE(s.decay);
    }
  EXPECT_TRUE(found);
  const Dims l = tiny_dims(true, false);
  const auto lspecs = parameter_specs(l);
  EXPECT_EQ(lspecs.back().name, "head.weight");
  for (const auto& s : lspecs) EXPECT_EQ(s.name.find(".bias"), std::string::npos) << s.name;
}

// Counter-based init: the same seed gives the same weights, a different seed differs,
// and a slice can be generated on its own (the rule that makes layouts equivalent).
TEST(ModelInit, CounterBased) {
  const Dims d = tiny_dims(true, false);
  Transformer<float> a(d, 1, 4), b(d, 1, 4), c(d, 1, 4);
  a.params().initialize(5);
  b.params().initialize(5);
  c.params().initialize(6);
  const auto& fa = a.params().flat_values();
  const auto& fb = b.params().flat_values();
  const auto& fc = c.params().flat_values();
  EXPECT_EQ(0, std::memcmp(fa.data(), fb.data(), fa.bytes()));
  EXPECT_NE(0, std::memcmp(fa.data(), fc.data(), fa.bytes()));
  const int idx = a.params().index("blocks.1.mlp.up.weight");
  std::vector<float> slice(10);
  rng::fill_normal(slice.data(), slice.size(), 5, "blocks.1.mlp.up.weight", 0.0f,
                   a.params().spec(idx).std, 37);
  for (int i = 0; i < 10; ++i) EXPECT_EQ(slice[i], a.params().value(idx)[37 + i]);
}

}  // namespace
}  // namespace kumiko::model
