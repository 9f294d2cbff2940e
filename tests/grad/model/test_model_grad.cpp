// Every layer's backward, through the whole model, against central finite
// differences of the forward in double precision, for both architectures; the
// agreement rule is tests/support/gradcheck.h, and the checker is shown to reject
// deliberately wrong gradients.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <iostream>
#include <random>

#include <gtest/gtest.h>

#include "kumiko/core/rng.h"
#include "kumiko/model/transformer.h"
#include "gradcheck.h"

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

// Central differences of the whole model's loss, in double, at chosen entries of one
// parameter, against an analytic gradient (the model's own, or a deliberately wrong
// copy for the checker's self-tests).
class ModelFd {
 public:
  static constexpr int64_t B = 2, T = 7;
  static constexpr double kStep = 1e-5;

  ModelFd(bool llama, bool tied)
      : dims_(tiny_dims(llama, tied)), model_(dims_, B, T), batch_(random_batch(B, T, dims_.V, 11)) {
    randomize(model_.params(), 7);
    model_.params().zero_grads();
    model_.forward_backward(batch_.inputs.data(), batch_.targets.data(), B, T, 1.0 / (B * T));
    loss_ = loss();
  }

  ParameterStore<double>& params() { return model_.params(); }
  const Dims& dims() const { return dims_; }
  // atol from the loss's magnitude and the step (tests/support/gradcheck.h).
  test::GradTolerance tolerance() const { return test::fd_tolerance(loss_, kStep); }

  std::vector<test::GradEntry> compare(int idx, const std::vector<int64_t>& at, const double* analytic) {
    std::vector<test::GradEntry> entries;
    for (const int64_t j : at) {
      double* w = params().value(idx) + j;
      const double saved = *w;
      *w = saved + kStep;
      const double up = loss();
      *w = saved - kStep;
      const double down = loss();
      *w = saved;
      entries.push_back({j, (up - down) / (2 * kStep), analytic[j]});
    }
    return entries;
  }
  std::vector<test::GradEntry> compare(int idx, const std::vector<int64_t>& at) {
    return compare(idx, at, params().grad(idx));
  }

 private:
  double loss() { return model_.loss(batch_.inputs.data(), batch_.targets.data(), B, T); }

  Dims dims_;
  Transformer<double> model_;
  Batch batch_;
  double loss_ = 0;
};

// `count` distinct-enough random entries of [first, last).
std::vector<int64_t> sample(int64_t first, int64_t last, int count, std::mt19937& gen) {
  std::uniform_int_distribution<int64_t> pick(first, last - 1);
  std::vector<int64_t> at;
  for (int k = 0; k < count; ++k) at.push_back(pick(gen));
  return at;
}

void check_model(bool llama, bool tied) {
  ModelFd fd(llama, tied);
  auto& p = fd.params();
  const auto tol = fd.tolerance();
  std::mt19937 gen(3);
  double worst = 0;
  for (size_t i = 0; i < p.size(); ++i) {
    const int idx = static_cast<int>(i);
    const auto entries = fd.compare(idx, sample(0, p.numel(idx), 6, gen));
    EXPECT_EQ("", test::grad_disagreements(entries, tol)) << (llama ? "llama " : "gpt2 ") << p.spec(idx).name;
    worst = std::max(worst, test::grad_worst_ratio(entries, tol));
  }
  std::cout << "[ NOTE     ] atol " << tol.atol << "; the largest discrepancy used " << worst
            << " of the allowed difference\n";
}

TEST(ModelGrad, Gpt2Tied) { check_model(false, true); }
TEST(ModelGrad, Gpt2Untied) { check_model(false, false); }
TEST(ModelGrad, LlamaUntied) { check_model(true, false); }
TEST(ModelGrad, LlamaTied) { check_model(true, true); }

// The key rows of the packed qkv projection: [Hq D, (Hq + Hkv) D) of (Hq + 2 Hkv) D.
std::pair<int64_t, int64_t> key_rows(const Dims& d) { return {d.Hq * d.D, (d.Hq + d.Hkv) * d.D}; }

// A key bias moves every score of a query by the same amount, which softmax ignores:
// its true gradient is exactly zero. Both differences must be within atol of zero.
TEST(ModelGrad, KeyBiasGradientIsZero) {
  ModelFd fd(false, true);
  auto& p = fd.params();
  const auto tol = fd.tolerance();
  for (int layer = 0; layer < 2; ++layer) {
    const int idx = p.index("blocks." + std::to_string(layer) + ".attn.qkv.bias");
    const auto [first, last] = key_rows(fd.dims());
    std::vector<int64_t> at;
    for (int64_t j = first; j < last; ++j) at.push_back(j);
    const std::vector<double> zeros(static_cast<size_t>(p.numel(idx)), 0.0);
    for (const auto& e : fd.compare(idx, at, zeros.data())) {
      EXPECT_LE(std::abs(e.numeric), tol.atol) << "numeric key bias gradient [" << e.index << "]";
      EXPECT_LE(std::abs(p.grad(idx)[e.index]), tol.atol) << "analytic key bias gradient [" << e.index << "]";
    }
  }
}

// The checker's self-tests: deliberately wrong gradients must fail it.
TEST(ModelGradChecker, RejectsGradientScaledBy1001) {
  for (const bool llama : {false, true}) {
    ModelFd fd(llama, true);
    auto& p = fd.params();
    const int idx = p.index(llama ? "blocks.1.norm2.weight" : "blocks.1.attn.proj.bias");
    std::vector<double> wrong(p.grad(idx), p.grad(idx) + p.numel(idx));
    for (auto& g : wrong) g *= 1.001;
    std::mt19937 gen(5);
    const auto at = sample(0, p.numel(idx), 6, gen);
    EXPECT_EQ("", test::grad_disagreements(fd.compare(idx, at), fd.tolerance())) << "the true gradient";
    EXPECT_NE("", test::grad_disagreements(fd.compare(idx, at, wrong.data()), fd.tolerance()))
        << (llama ? "llama " : "gpt2 ") << p.spec(idx).name << " * 1.001 passed the check";
  }
}

// Dropping the attention backward's key term (dK = 0) leaves the key rows of the qkv
// weight's gradient at zero.
TEST(ModelGradChecker, RejectsMissingKeyTerm) {
  for (const bool llama : {false, true}) {
    ModelFd fd(llama, false);
    auto& p = fd.params();
    const int idx = p.index("blocks.0.attn.qkv.weight");
    const int64_t C = fd.dims().C;
    const auto [first, last] = key_rows(fd.dims());
    std::vector<double> wrong(p.grad(idx), p.grad(idx) + p.numel(idx));
    std::fill(wrong.begin() + first * C, wrong.begin() + last * C, 0.0);
    std::mt19937 gen(6);
    const auto at = sample(first * C, last * C, 6, gen);
    EXPECT_EQ("", test::grad_disagreements(fd.compare(idx, at), fd.tolerance())) << "the true gradient";
    EXPECT_NE("", test::grad_disagreements(fd.compare(idx, at, wrong.data()), fd.tolerance()))
        << (llama ? "llama" : "gpt2") << ": zero key-row gradients passed the check";
  }
}

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
