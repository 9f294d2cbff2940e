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
#include "layout_compare.h"

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
      EXPECT_LT(testing::relative_difference(grads[i], ref_grads[i], ref.params().spec(static_cast<int>(i)).name), 1e-5)
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


TEST_P(TensorParallel, TrainingMatchesOneProcess) {
  const std::string arch = GetParam();
  auto& world = comm::world();
  const int r = world.rank();
  auto solo = world.split(r, 0, "solo");
  const testing::LayoutResult ref = testing::train_on(*solo, tiny(arch, g_root + "/" + arch + "-ref-" + std::to_string(r)));
  for (bool sp : {false, true}) {
    const std::string tag = arch + (sp ? "-sp" : "");
    auto pair = world.split(r / 2, r % 2, "pair");
    auto c2 = tiny(arch, g_root + "/" + tag + "-tp2-" + std::to_string(r / 2));
    c2.parallel.tp = 2;
    c2.parallel.sequence_parallel = sp;
    testing::expect_same_run(testing::train_on(*pair, c2), ref, tag + " tp=2");
    auto c4 = tiny(arch, g_root + "/" + tag + "-tp4");
    c4.parallel.tp = 4;
    c4.parallel.sequence_parallel = sp;
    testing::expect_same_run(testing::train_on(world, c4), ref, tag + " tp=4");
    auto c22 = tiny(arch, g_root + "/" + tag + "-tp2dp2");
    c22.parallel.tp = 2;
    c22.parallel.dp = 2;
    c22.parallel.zero = 1;
    c22.parallel.sequence_parallel = sp;
    testing::expect_same_run(testing::train_on(world, c22), ref, tag + " tp=2 x dp=2 zero=1");
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
  const testing::LayoutResult straight = testing::train_on(world, c22);
  auto first = c22;
  first.log.run_dir = base + "-split";
  first.train.stop_at = 10;
  train::Trainer(first, world).run();
  world.barrier();
  const std::string ckpt = first.log.run_dir + "/checkpoints/step_00000010.h5";
  auto solo = world.split(r, 0, "solo");
  auto c1 = tiny(arch, base + "-solo-" + std::to_string(r));
  c1.checkpoint.resume = ckpt;
  testing::LayoutResult one = testing::train_on(*solo, c1);
  one.losses.insert(one.losses.begin(), straight.losses.begin(), straight.losses.begin() + 10);
  testing::expect_same_run(one, straight, arch + " dp=2 x tp=2 -> one process");
  auto c4 = tiny(arch, base + "-tp4");
  c4.parallel.tp = 4;
  c4.parallel.sequence_parallel = true;
  c4.checkpoint.resume = ckpt;
  testing::LayoutResult four = testing::train_on(world, c4);
  four.losses.insert(four.losses.begin(), straight.losses.begin(), straight.losses.begin() + 10);
  testing::expect_same_run(four, straight, arch + " dp=2 x tp=2 -> tp=4 with sp");
}

INSTANTIATE_TEST_SUITE_P(Arch, TensorParallel, ::testing::Values("gpt2", "llama"));

}  // namespace
}  // namespace kumiko

int main(int argc, char** argv) { return kumiko::testing::mpi_test_main(argc, argv, "kumiko-tp", kumiko::g_root); }
