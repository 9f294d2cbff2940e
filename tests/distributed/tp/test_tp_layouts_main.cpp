// Tensor parallelism (Megatron-style, with optional sequence parallelism) against
// one process, under mpirun -np 4:
// - every parallel layer, forward and backward: the loss and the gradient of every
//   logical tensor (column-parallel qkv/fc/gate/up, row-parallel proj/down,
//   vocab-parallel embedding and head with the vocab-parallel cross-entropy,
//   replicated norms and biases) at tp = 2 and 4 equal the unsplit model's;
// - memory: each rank stores 1/tp of every splittable tensor plus the replicated ones;
// - 20 training steps at tp = 2, tp = 4 and tp = 2 x dp = 2, with and without
//   sequence parallelism, give the one-process losses and final parameters;
// - a checkpoint saved at dp = 2 x tp = 2 resumes in one process and at tp = 4.
#include <unistd.h>

#include <cmath>
#include <filesystem>

#include <gtest/gtest.h>

#include "kumiko/comm/communicator.h"
#include "kumiko/core/log.h"
#include "kumiko/core/rng.h"
#include "kumiko/model/sharding.h"
#include "kumiko/train/trainer.h"
#include "kumiko/train/weights.h"
#include "kumiko_test_support.h"

namespace kumiko {
namespace {

std::string g_root;

// The shared tiny model with head counts and a vocabulary divisible by tp = 4 (llama
// keeps grouped-query attention: 8 query heads over 4 kv heads), 8 sequences per step.
config::Config tiny(const std::string& arch, const std::string& run_dir) {
  auto c = testing::tiny_config(arch, run_dir);
  c.model.n_heads = arch == "llama" ? 8 : 4;
  c.model.n_kv_heads = arch == "llama" ? 4 : 0;
  c.model.vocab_size = 96;
  c.train.global_batch = 8;
  c.train.lr = 3e-3;
  c.train.min_lr = 3e-4;
  c.backend.threads = 1;
  c.parallel.bucket_mb = 0.004;
  c.log.level = "error";
  return c;
}

double rel_diff(const std::vector<float>& a, const std::vector<float>& b, const std::string& name) {
  // The key third of the gpt2 qkv bias has an exactly zero gradient in exact
  // arithmetic (see tests/distributed/dp): compare its q and v thirds.
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

struct Variant {
  int tp;
  bool sp;
};

class TensorParallel : public ::testing::TestWithParam<std::string> {};

TEST_P(TensorParallel, EveryLayerForwardAndBackwardMatchesTheUnsplitModel) {
  auto& world = comm::world();
  const int r = world.rank();
  const auto cfg = tiny(GetParam(), "");
  const model::Dims d = model::Dims::from(cfg.model);
  const int64_t B = 2, T = 16;
  std::vector<int32_t> inputs, targets;
  for (int64_t i = 0; i < B * T; ++i) {
    inputs.push_back(static_cast<int32_t>(rng::philox(11, 0, i)[0] % d.V));
    targets.push_back(static_cast<int32_t>(rng::philox(11, 1, i)[0] % d.V));
  }
  // The unsplit model.
  model::Transformer<float> ref(d, B, T);
  ref.params().initialize(7);
  ref.params().zero_grads();
  const double ref_loss = ref.forward_backward(inputs.data(), targets.data(), B, T, 1.0f / (B * T));
  const auto ref_grads = model::gather_logical(ref, ref.params().flat_grads().data());
  int64_t total = 0, replicated = 0;
  for (size_t i = 0; i < ref.params().size(); ++i) {
    total += ref.params().numel(static_cast<int>(i));
    const auto spec = model::parameter_specs(d, 2, 0)[i];
    if (spec.split == model::Split::none) replicated += ref.params().numel(static_cast<int>(i));
  }
  for (const Variant v : {Variant{2, false}, Variant{2, true}, Variant{4, false}, Variant{4, true}}) {
    auto group = world.split(r / v.tp, r % v.tp, "tp");
    model::Transformer<float> m(d, B, T, model::TensorParallel{group.get(), v.sp});
    m.params().initialize(7);  // counter-based: each shard holds its slice of the same tensors
    const auto values = model::gather_logical(m, m.params().flat_values().data());
    const auto ref_values = model::gather_logical(ref, ref.params().flat_values().data());
    EXPECT_EQ(values, ref_values) << "tp=" << v.tp << ": initial weights are not the one-process slices";
    m.params().zero_grads();
    const double loss = m.forward_backward(inputs.data(), targets.data(), B, T, 1.0f / (B * T));
    const std::string what = GetParam() + " tp=" + std::to_string(v.tp) + (v.sp ? " sp" : "");
    EXPECT_NEAR(loss, ref_loss, 1e-5 * ref_loss) << what;
    const auto grads = model::gather_logical(m, m.params().flat_grads().data());
    for (size_t i = 0; i < grads.size(); ++i)
      EXPECT_LT(rel_diff(grads[i], ref_grads[i], ref.params().spec(static_cast<int>(i)).name), 1e-5)
          << what << ": gradient of " << ref.params().spec(static_cast<int>(i)).name;
    // Last-position logits are gathered over the vocabulary shards.
    std::vector<float> a(B * d.V), b(B * d.V);
    m.last_logits(inputs.data(), B, T, a.data());
    ref.last_logits(inputs.data(), B, T, b.data());
    for (size_t i = 0; i < a.size(); ++i) ASSERT_NEAR(a[i], b[i], 1e-4) << what << " logits " << i;
    // Memory: 1/tp of the splittable tensors plus the replicated ones.
    int64_t mine = 0;
    for (size_t i = 0; i < m.params().size(); ++i) mine += m.params().numel(static_cast<int>(i));
    EXPECT_EQ(mine, (total - replicated) / v.tp + replicated) << what;
  }
}

struct Result {
  std::vector<double> losses;
  model::LogicalTensors weights;
  std::vector<std::string> names;
};

Result train_on(comm::Communicator& group, const config::Config& c) {
  train::Trainer t(c, group);
  Result res;
  res.losses = t.run().losses;
  group.barrier();
  const auto specs = model::parameter_specs(model::Dims::from(c.model));
  for (const auto& s : specs) {
    res.names.push_back(s.name);
    res.weights.emplace_back(static_cast<size_t>(numel_of(s.shape)));
  }
  std::vector<float*> ptrs;
  for (auto& w : res.weights) ptrs.push_back(w.data());
  train::read_weights(c.log.run_dir + "/weights_final.h5", specs, ptrs);
  return res;
}

void expect_close(const Result& a, const Result& ref, const std::string& what) {
  ASSERT_EQ(a.losses.size(), ref.losses.size()) << what;
  for (size_t i = 0; i < a.losses.size(); ++i)
    EXPECT_NEAR(a.losses[i], ref.losses[i], 1e-5 * std::abs(ref.losses[i])) << what << " step " << i + 1;
  for (size_t i = 0; i < a.weights.size(); ++i)
    EXPECT_LT(rel_diff(a.weights[i], ref.weights[i], ref.names[i]), 1e-5) << what << ": final " << ref.names[i];
}

TEST_P(TensorParallel, TrainingMatchesOneProcess) {
  const std::string arch = GetParam();
  auto& world = comm::world();
  const int r = world.rank();
  auto solo = world.split(r, 0, "solo");
  const Result ref = train_on(*solo, tiny(arch, g_root + "/" + arch + "-ref-" + std::to_string(r)));
  for (bool sp : {false, true}) {
    const std::string tag = arch + (sp ? "-sp" : "");
    auto pair = world.split(r / 2, r % 2, "pair");
    auto c2 = tiny(arch, g_root + "/" + tag + "-tp2-" + std::to_string(r / 2));
    c2.parallel.tp = 2;
    c2.parallel.sequence_parallel = sp;
    expect_close(train_on(*pair, c2), ref, tag + " tp=2");
    auto c4 = tiny(arch, g_root + "/" + tag + "-tp4");
    c4.parallel.tp = 4;
    c4.parallel.sequence_parallel = sp;
    expect_close(train_on(world, c4), ref, tag + " tp=4");
    auto c22 = tiny(arch, g_root + "/" + tag + "-tp2dp2");
    c22.parallel.tp = 2;
    c22.parallel.dp = 2;
    c22.parallel.zero = 1;
    c22.parallel.sequence_parallel = sp;
    expect_close(train_on(world, c22), ref, tag + " tp=2 x dp=2 zero=1");
  }
}

TEST_P(TensorParallel, CheckpointReshardsAcrossLayouts) {
  const std::string arch = GetParam();
  auto& world = comm::world();
  const int r = world.rank();
  const std::string base = g_root + "/" + arch + "-reshard";
  auto c22 = tiny(arch, base + "-tp2dp2");
  c22.parallel.tp = 2;
  c22.parallel.dp = 2;
  c22.parallel.zero = 1;
  const Result straight = train_on(world, c22);
  auto first = c22;
  first.log.run_dir = base + "-split";
  first.train.stop_at = 10;
  train::Trainer(first, world).run();
  world.barrier();
  const std::string ckpt = first.log.run_dir + "/checkpoints/step_00000010.h5";
  auto solo = world.split(r, 0, "solo");
  auto c1 = tiny(arch, base + "-solo-" + std::to_string(r));
  c1.checkpoint.resume = ckpt;
  Result one = train_on(*solo, c1);
  one.losses.insert(one.losses.begin(), straight.losses.begin(), straight.losses.begin() + 10);
  expect_close(one, straight, arch + " dp=2 x tp=2 -> one process");
  auto c4 = tiny(arch, base + "-tp4");
  c4.parallel.tp = 4;
  c4.parallel.sequence_parallel = true;
  c4.checkpoint.resume = ckpt;
  Result four = train_on(world, c4);
  four.losses.insert(four.losses.begin(), straight.losses.begin(), straight.losses.begin() + 10);
  expect_close(four, straight, arch + " dp=2 x tp=2 -> tp=4 with sp");
}

INSTANTIATE_TEST_SUITE_P(Arch, TensorParallel, ::testing::Values("gpt2", "llama"));

}  // namespace
}  // namespace kumiko

int main(int argc, char** argv) { return kumiko::testing::mpi_test_main(argc, argv, "kumiko-tp", kumiko::g_root); }
