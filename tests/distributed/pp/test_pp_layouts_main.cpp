// Pipeline parallelism (ARCHITECTURE.md's central test for pp): 20 steps of the tiny
// gpt2 (tied embedding across the first and last stage) and llama models give the
// one-process losses and final parameters within 1e-5 relative for
//   4 ranks: pp=2 with gpipe, 1f1b and interleaved (2 chunks per rank), pp=4, pp=2
//            with uneven stages (parallel.pp_layers = 3,1), pp=2 x dp=2 with ZeRO-1;
//            a checkpoint saved at pp=4 resumes in one process;
//   8 ranks: dp=2 x tp=2 x pp=2 with ZeRO-1 and sequence parallelism.
#include <cmath>
#include <filesystem>

#include <gtest/gtest.h>

#include "kumiko/comm/communicator.h"
#include "kumiko/model/sharding.h"
#include "kumiko/train/trainer.h"
#include "kumiko/train/weights.h"
#include "kumiko_test_support.h"
#include "layout_compare.h"

namespace kumiko {
namespace {

std::string g_root;

// testing::layout_config in micro-batches of 1 (so each pipeline has several).
config::Config tiny(const std::string& arch, const std::string& run_dir) {
  auto c = testing::layout_config(arch, run_dir);
  c.train.micro_batch = 1;
  return c;
}


class Pipeline : public ::testing::TestWithParam<std::string> {};

TEST_P(Pipeline, LayoutsMatchOneProcess) {
  const std::string arch = GetParam();
  auto& world = comm::world();
  const int r = world.rank();
  auto solo = world.split(r, 0, "solo");
  const testing::LayoutResult ref = testing::train_on(*solo, tiny(arch, g_root + "/" + arch + "-ref-" + std::to_string(r)));
  auto layout = [&](const std::string& name, auto&& set) {
    auto c = tiny(arch, g_root + "/" + arch + "-" + name);
    set(c);
    auto group = testing::layout_group(world, c);
    testing::expect_same_run(testing::train_on(*group, c), ref, arch + " " + name);
  };
  if (world.size() == 8) {
    layout("dp2-tp2-pp2-sp", [](config::Config& c) {
      c.parallel.dp = c.parallel.tp = c.parallel.pp = 2;
      c.parallel.zero = 1;
      c.parallel.sequence_parallel = true;
    });
    return;
  }
  for (const char* schedule : {"gpipe", "1f1b"})
    layout(std::string("pp2-") + schedule, [&](config::Config& c) {
      c.parallel.pp = 2;
      c.parallel.pp_schedule = schedule;
    });
  layout("pp2-interleaved", [](config::Config& c) {
    c.parallel.pp = 2;
    c.parallel.pp_schedule = "interleaved";
    c.parallel.pp_chunks = 2;
  });
  layout("pp4", [](config::Config& c) { c.parallel.pp = 4; });
  layout("pp2-uneven", [](config::Config& c) {
    c.parallel.pp = 2;
    c.parallel.pp_layers = "3,1";
  });
  layout("pp2-dp2-zero1", [](config::Config& c) {
    c.parallel.pp = 2;
    c.parallel.dp = 2;
    c.parallel.zero = 1;
  });
}

TEST_P(Pipeline, CheckpointFromStagesResumesInOneProcess) {
  auto& world = comm::world();
  if (world.size() != 4) GTEST_SKIP() << "runs at 4 ranks";
  const std::string arch = GetParam();
  const int r = world.rank();
  const std::string base = g_root + "/" + arch + "-ckpt";
  auto c4 = tiny(arch, base + "-pp4");
  c4.parallel.pp = 4;
  const testing::LayoutResult straight = testing::train_on(world, c4);
  auto first = c4;
  first.log.run_dir = base + "-split";
  first.train.stop_at = 10;
  train::Trainer(first, world).run();
  world.barrier();
  auto solo = world.split(r, 0, "solo");
  auto c1 = tiny(arch, base + "-solo-" + std::to_string(r));
  c1.checkpoint.resume = first.log.run_dir + "/checkpoints/step_00000010.h5";
  testing::LayoutResult one = testing::train_on(*solo, c1);
  one.losses.insert(one.losses.begin(), straight.losses.begin(), straight.losses.begin() + 10);
  testing::expect_same_run(one, straight, arch + " pp=4 -> one process");
  // And back: the same checkpoint on pp=2 x dp=2.
  auto pair = world.split(0, r, "all");
  auto c22 = tiny(arch, base + "-pp2dp2");
  c22.parallel.pp = 2;
  c22.parallel.dp = 2;
  c22.checkpoint.resume = first.log.run_dir + "/checkpoints/step_00000010.h5";
  testing::LayoutResult two = testing::train_on(*pair, c22);
  two.losses.insert(two.losses.begin(), straight.losses.begin(), straight.losses.begin() + 10);
  testing::expect_same_run(two, straight, arch + " pp=4 -> pp=2 x dp=2");
}

INSTANTIATE_TEST_SUITE_P(Arch, Pipeline, ::testing::Values("gpt2", "llama"));

}  // namespace
}  // namespace kumiko

int main(int argc, char** argv) { return kumiko::testing::mpi_test_main(argc, argv, "kumiko-pp", kumiko::g_root); }
