// Parity with an independent PyTorch implementation (scripts/reference/): the
// loss on a fixed batch, every tensor's gradient norm and the losses of 10 AdamW
// steps, against golden values computed in float64 (tests/golden/parity_*.json).
// Checked for kumiko's float model (the training path, 1e-5 relative) and for
// its double instantiation (the same code, 1e-9 relative).
#include <cmath>
#include <type_traits>

#include <gtest/gtest.h>

#include "kumiko/comm/communicator.h"
#include "kumiko/parallel/data_parallel.h"
#include "kumiko/train/optimizer.h"
#include "mini_json.h"
#include "parity_setup.h"

namespace kumiko::parity {
namespace {

struct Run {
  double loss0 = 0;
  std::map<std::string, double> grad_norms;
  std::vector<double> losses;
  std::map<std::string, double> final_norms;
  std::map<std::string, std::vector<double>> final_samples;
};

template <typename T>
Run run(const Setup& s, int steps) {
  model::Transformer<T> m(s.dims, s.B, s.T);
  auto& p = m.params();
  {
    model::Transformer<float> f(s.dims, 1, 1);  // float init, as exported
    f.params().initialize(s.cfg.train.seed);
    for (int64_t i = 0; i < p.total_numel(); ++i) p.flat_values()[i] = f.params().flat_values()[i];
  }
  const auto& t = s.cfg.train;
  const train::AdamWSettings adamw{t.beta1, t.beta2, t.eps, t.weight_decay};
  // The trainer's own optimizer path (DataParallel on one rank: reduction, global
  // norm, AdamW), in float and in double.
  auto local = comm::make_local();
  parallel::BasicDataParallel<backend::Cpu<T>> dp(*local, m, 0, int64_t{1} << 20, adamw);
  Run r;
  for (int step = 0; step < steps; ++step) {
    p.zero_grads();
    const double loss = m.forward_backward(s.inputs.data(), s.targets.data(), s.B, s.T,
                                           static_cast<T>(1.0 / static_cast<double>(s.B * s.T)));
    r.losses.push_back(loss);
    if (step == 0) {
      r.loss0 = loss;
      for (size_t i = 0; i < p.size(); ++i) {
        double ss = 0;
        for (int64_t j = 0; j < p.numel(static_cast<int>(i)); ++j)
          ss += static_cast<double>(p.grad(static_cast<int>(i))[j]) * p.grad(static_cast<int>(i))[j];
        r.grad_norms[p.spec(static_cast<int>(i)).name] = std::sqrt(ss);
      }
    }
    dp.finish_reduction();
    const double norm = dp.grad_norm();
    dp.step(t.lr, norm > t.grad_clip ? t.grad_clip / (norm + 1e-6) : 1.0);
  }
  for (size_t i = 0; i < p.size(); ++i) {
    const int idx = static_cast<int>(i);
    double ss = 0;
    for (int64_t j = 0; j < p.numel(idx); ++j) ss += static_cast<double>(p.value(idx)[j]) * p.value(idx)[j];
    r.final_norms[p.spec(idx).name] = std::sqrt(ss);
    auto& sample = r.final_samples[p.spec(idx).name];
    for (int64_t j = 0; j < std::min<int64_t>(8, p.numel(idx)); ++j) sample.push_back(p.value(idx)[j]);
  }
  return r;
}

double rel(double a, double b) { return std::abs(a - b) / std::max(std::abs(b), 1e-12); }

template <typename T>
void compare(const std::string& arch, double tol) {
  const Setup s = make_setup(golden_path(arch, "ini"));
  const testing::Json g = testing::read_json(golden_path(arch, "json"));
  const int steps = static_cast<int>(g["losses"].items.size());
  ASSERT_GE(steps, 10);
  const Run r = run<T>(s, steps);
  EXPECT_LT(rel(r.loss0, g["loss"].number), tol) << "initial loss " << r.loss0 << " vs " << g["loss"].number;
  ASSERT_EQ(r.grad_norms.size(), g["grad_norms"].fields.size());
  for (const auto& [name, norm] : r.grad_norms)
    EXPECT_LT(rel(norm, g["grad_norms"][name].number), tol) << "grad norm of " << name;
  for (int i = 0; i < steps; ++i)
    EXPECT_LT(rel(r.losses[i], g["losses"][i].number), tol) << "loss before AdamW step " << i;
  for (const auto& [name, v] : g["final_param_norms"].fields)
    EXPECT_LT(rel(r.final_norms.at(name), v.number), tol) << "final norm of " << name;
  // Single elements after `steps` AdamW steps: the normalised update m/sqrt(v) moves each
  // element by up to lr per step whatever the size of its gradient, so an element's
  // rounding error scales with its path (at most lr x steps), not with its value. A small
  // gradient element carries more relative rounding than its tensor's norm (checked at
  // tol above), hence 10 x tol relative to the larger of the two.
  const double path = s.cfg.train.lr * steps;
  for (const auto& [name, v] : g["final_param_samples"].fields)
    for (size_t j = 0; j < v.items.size(); ++j)
      EXPECT_NEAR(r.final_samples.at(name)[j], v.items[j].number, tol * 10 * std::max(path, std::abs(v.items[j].number)))
          << name << "[" << j << "]";
}

TEST(Parity, Gpt2Float) { compare<float>("gpt2", 1e-5); }
TEST(Parity, LlamaFloat) { compare<float>("llama", 1e-5); }
TEST(Parity, Gpt2Double) { compare<double>("gpt2", 1e-9); }
TEST(Parity, LlamaDouble) { compare<double>("llama", 1e-9); }

}  // namespace
}  // namespace kumiko::parity
