#pragma once
// Layout-equivalence helpers shared by the distributed tests: train a run on a group
// of ranks, read its final weights as logical tensors, and compare losses and
// weights with another run within 1e-5 relative.
#include <cmath>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "kumiko/comm/communicator.h"
#include "kumiko_test_support.h"
#include "kumiko/model/sharding.h"
#include "kumiko/train/trainer.h"
#include "kumiko/train/weights.h"

namespace kumiko::testing {

struct LayoutResult {
  std::vector<double> losses;
  model::LogicalTensors weights;  // final, logical, in parameter_specs order
  std::vector<std::string> names;
};

// The layout tests' model and run: testing::tiny_config with 4 layers (pp=4 and pp=2 x
// 2 chunks divide them), a vocabulary of 96 (divisible by tp=2 and 4), 8 sequences a
// step, one thread per rank, tiny gradient buckets (several per step).
// With 4 layers some gradient elements of the last block are near zero; AdamW with
// eps = 1e-8 turns their rounding differences between layouts into +-lr steps
// (checked: with a larger eps the one-step weights agree to 5e-9). eps = 1e-6 and
// lr = 3e-3 keep the comparisons about the layouts.
inline config::Config layout_config(const std::string& arch, const std::string& run_dir) {
  auto c = tiny_config(arch, run_dir);
  c.model.n_layers = 4;
  c.model.vocab_size = 96;
  c.train.global_batch = 8;
  c.train.lr = 3e-3;
  c.train.min_lr = 3e-4;
  c.train.eps = 1e-6;
  c.backend.threads = 1;
  c.parallel.bucket_mb = 0.004;
  c.log.level = "error";
  return c;
}

// This rank's group for a run of layout `c` when `world` is cut into groups of
// dp x tp x pp ranks (several copies of a small layout run side by side); the group's
// index is appended to c.log.run_dir so that the copies write apart.
inline std::unique_ptr<comm::Communicator> layout_group(comm::Communicator& world, config::Config& c) {
  const int ranks = c.parallel.dp * c.parallel.tp * c.parallel.pp;
  c.log.run_dir += "-" + std::to_string(world.rank() / ranks);
  return world.split(world.rank() / ranks, world.rank() % ranks, "layout");
}

// Trains `c` on the ranks of `group` and reads <run_dir>/weights_final.h5.
inline LayoutResult train_on(comm::Communicator& group, const config::Config& c) {
  train::Trainer t(c, group);
  LayoutResult res;
  res.losses = t.run().losses;
  group.barrier();
  const auto specs = model::parameter_specs(model::Dims::from(c.model));
  std::vector<float*> ptrs;
  for (const auto& s : specs) {
    res.names.push_back(s.name);
    res.weights.emplace_back(static_cast<size_t>(numel_of(s.shape)));
  }
  for (auto& w : res.weights) ptrs.push_back(w.data());
  train::read_weights(c.log.run_dir + "/weights_final.h5", specs, ptrs);
  return res;
}

// ||a - b|| / ||b|| over a tensor. The key third of the gpt2 qkv bias has an exactly
// zero gradient in exact arithmetic (adding b_k to every key adds the same q.b_k to
// all scores of a query, which softmax ignores), so its float gradient is rounding
// noise that AdamW turns into +-lr steps; it never changes the model's output (the
// losses match). Only its q and v thirds are compared.
inline double relative_difference(const std::vector<float>& a, const std::vector<float>& b,
                                  const std::string& name) {
  size_t k0 = 0, k1 = 0;
  if (name.find("attn.qkv.bias") != std::string::npos) k0 = a.size() / 3, k1 = 2 * a.size() / 3;
  double d = 0, n = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (i >= k0 && i < k1) continue;
    d += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    n += double(b[i]) * b[i];
  }
  return n == 0 ? std::sqrt(d) : std::sqrt(d / n);
}

// n random token ids in [0, V) from seed (inputs or targets of a model-level test).
inline std::vector<int32_t> random_tokens(int64_t V, int64_t n, std::mt19937& gen) {
  std::uniform_int_distribution<int32_t> tok(0, static_cast<int32_t>(V) - 1);
  std::vector<int32_t> out(static_cast<size_t>(n));
  for (auto& x : out) x = tok(gen);
  return out;
}

// Every gradient in `grads` (the flat, padded layout of `ref`'s ParameterStore, e.g.
// another backend's download) within `bound` relative L2 of ref's, and finite.
inline void expect_gradients_close(const model::ParameterStore<float>& ref, const float* grads, double bound) {
  for (size_t i = 0; i < ref.size(); ++i) {
    const int k = static_cast<int>(i);
    const int64_t n = ref.numel(k);
    const std::string& name = ref.spec(k).name;
    const float* got = grads + (ref.grad(k) - ref.flat_grads().data());
    EXPECT_LT(relative_difference(std::vector<float>(got, got + n), std::vector<float>(ref.grad(k), ref.grad(k) + n),
                                  name),
              bound)
        << name;
    for (int64_t j = 0; j < n; ++j) ASSERT_TRUE(std::isfinite(got[j])) << name;
  }
}

// Same losses step by step (loss_rtol relative) and same final weights (weight_rtol
// relative): 1e-5 unless the two runs use different kernels (see
// GpuLayouts.OneGpuMatchesCpu) or bf16 (tests/distributed/bf16).
inline void expect_same_run(const LayoutResult& a, const LayoutResult& ref, const std::string& what,
                            double weight_rtol = 1e-5, double loss_rtol = 1e-5) {
  ASSERT_EQ(a.losses.size(), ref.losses.size()) << what;
  for (size_t i = 0; i < a.losses.size(); ++i)
    EXPECT_NEAR(a.losses[i], ref.losses[i], loss_rtol * std::abs(ref.losses[i])) << what << " step " << i + 1;
  for (size_t i = 0; i < a.weights.size(); ++i)
    EXPECT_LT(relative_difference(a.weights[i], ref.weights[i], ref.names[i]), weight_rtol)
        << what << ": final " << ref.names[i];
}

}  // namespace kumiko::testing
