// Layout equivalence (ARCHITECTURE.md's central test) for data parallelism: 20
// steps of the tiny gpt2 and llama models with dp=2 and dp=4, zero=0 and zero=1,
// give the one-process losses and final parameters within 1e-5 relative (the same
// global batch; only the reduction order differs). Runs under mpirun -np 4.
#include <unistd.h>

#include <cmath>
#include <filesystem>

#include <gtest/gtest.h>

#include "kumiko/comm/communicator.h"
#include "kumiko/core/log.h"
#include "kumiko/model/transformer.h"
#include "kumiko/train/trainer.h"
#include "kumiko/train/weights.h"
#include "kumiko_test_support.h"
#include "layout_compare.h"

namespace kumiko {
namespace {

namespace fs = std::filesystem;

std::string g_root;  // shared by all ranks (rank 0's pid)

// The shared tiny model, 20 steps of 8 sequences in micro-batches of 2 (so dp = 4
// still accumulates), one thread per rank, small buckets.
config::Config tiny(const std::string& arch, const std::string& run_dir) {
  auto c = testing::tiny_config(arch, run_dir);
  c.train.global_batch = 8;
  c.train.lr = 3e-3;  // configs/tiny.ini's peak rate
  c.train.min_lr = 3e-4;
  c.backend.threads = 1;
  c.parallel.bucket_mb = 0.004;  // several buckets even for this tiny model
  c.log.level = "error";
  return c;
}


class Layouts : public ::testing::TestWithParam<std::string> {};

TEST_P(Layouts, DataParallelMatchesOneProcess) {
  const std::string arch = GetParam();
  auto& world = comm::world();
  ASSERT_EQ(world.size(), 4) << "run under mpirun -np 4";
  const int r = world.rank();
  // One process: each rank trains its own copy (a 1-rank group).
  auto solo = world.split(r, 0, "solo");
  const testing::LayoutResult ref = testing::train_on(*solo, tiny(arch, g_root + "/" + arch + "-ref-" + std::to_string(r)));
  for (int zero : {0, 1}) {
    // dp = 2: ranks {0,1} and {2,3} train the same model side by side.
    auto pair = world.split(r / 2, r % 2, "dp2");
    auto c2 = tiny(arch, g_root + "/" + arch + "-dp2-z" + std::to_string(zero) + "-" + std::to_string(r / 2));
    c2.parallel.dp = 2;
    c2.parallel.zero = zero;
    testing::expect_same_run(testing::train_on(*pair, c2), ref, arch + " dp=2 zero=" + std::to_string(zero));
    // dp = 4 over the whole world.
    auto c4 = tiny(arch, g_root + "/" + arch + "-dp4-z" + std::to_string(zero));
    c4.parallel.dp = 4;
    c4.parallel.zero = zero;
    testing::expect_same_run(testing::train_on(world, c4), ref, arch + " dp=4 zero=" + std::to_string(zero));
    // Gradient accumulation inside dp: micro_batch 1 (2 micro-steps per rank at dp=4).
    auto c4m = c4;
    c4m.train.micro_batch = 1;
    c4m.log.run_dir += "-mb1";
    testing::expect_same_run(testing::train_on(world, c4m), ref, arch + " dp=4 micro_batch=1 zero=" + std::to_string(zero));
  }
}

// Checkpoints hold logical tensors: a run saved at dp=4 with ZeRO-1 resumes in one
// process or at dp=2 without ZeRO, within 1e-5 of the uninterrupted run; resuming on
// the same layout is bitwise identical.
TEST_P(Layouts, ResumeOnAnyLayout) {
  const std::string arch = GetParam();
  auto& world = comm::world();
  const int r = world.rank();
  const std::string base = g_root + "/" + arch + "-resume";
  auto c4 = tiny(arch, base + "-dp4");
  c4.parallel.dp = 4;
  c4.parallel.zero = 1;
  const testing::LayoutResult straight = testing::train_on(world, c4);  // 20 steps, dp=4, zero=1
  auto first = c4;
  first.log.run_dir = base + "-dp4-split";
  first.train.stop_at = 10;
  train::Trainer(first, world).run();
  world.barrier();
  const std::string ckpt = first.log.run_dir + "/checkpoints/step_00000010.h5";
  // Same layout: bitwise.
  auto same = first;
  same.train.stop_at = 0;
  same.checkpoint.resume = "auto";
  const testing::LayoutResult resumed = testing::train_on(world, same);
  ASSERT_EQ(resumed.losses.size(), 10u);
  for (size_t i = 0; i < 10; ++i) EXPECT_EQ(resumed.losses[i], straight.losses[10 + i]) << "step " << 11 + i;
  EXPECT_EQ(resumed.weights, straight.weights);
  // One process (each rank on its own) from the dp=4 checkpoint.
  auto solo = world.split(r, 0, "solo");
  auto c1 = tiny(arch, base + "-solo-" + std::to_string(r));
  c1.checkpoint.resume = ckpt;
  testing::LayoutResult one = testing::train_on(*solo, c1);
  one.losses.insert(one.losses.begin(), straight.losses.begin(), straight.losses.begin() + 10);
  testing::expect_same_run(one, straight, arch + " resumed dp=4,zero=1 -> one process");
  // dp=2 without ZeRO.
  auto pair = world.split(r / 2, r % 2, "dp2");
  auto c2 = tiny(arch, base + "-dp2-" + std::to_string(r / 2));
  c2.parallel.dp = 2;
  c2.checkpoint.resume = ckpt;
  testing::LayoutResult two = testing::train_on(*pair, c2);
  two.losses.insert(two.losses.begin(), straight.losses.begin(), straight.losses.begin() + 10);
  testing::expect_same_run(two, straight, arch + " resumed dp=4,zero=1 -> dp=2,zero=0");
}

// A NaN gradient on one rank only: every rank skips the same step, and the run is
// otherwise the run without that update.
TEST_P(Layouts, NonFiniteGradientOnOneRankIsSkippedEverywhere) {
  auto& world = comm::world();
  for (int zero : {0, 1}) {
    auto c = tiny(GetParam(), g_root + "/" + GetParam() + "-nan-z" + std::to_string(zero));
    c.parallel.dp = 4;
    c.parallel.zero = zero;
    c.train.steps = 6;
    c.train.inject_nan_step = 4;
    c.train.inject_nan_rank = 2;
    train::Trainer t(c, world);
    const auto r = t.run();
    EXPECT_EQ(r.skipped, std::vector<int64_t>{4}) << "rank " << world.rank();
    EXPECT_EQ(r.losses.size(), 5u);
    for (double l : r.losses) EXPECT_TRUE(std::isfinite(l));
  }
}

INSTANTIATE_TEST_SUITE_P(Arch, Layouts, ::testing::Values("gpt2", "llama"));

}  // namespace
}  // namespace kumiko

int main(int argc, char** argv) { return kumiko::testing::mpi_test_main(argc, argv, "kumiko-dp", kumiko::g_root); }
