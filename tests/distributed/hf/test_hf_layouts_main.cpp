// Import -> train 10 steps under dp 2 x tp 2 (train.init_from) -> export -> import is
// bitwise equal to the trained weights, and the run matches one process from the same
// imported weights (losses and final weights within 1e-5, layout_compare.h).
#include <string>

#include <gtest/gtest.h>

#include "kumiko/comm/communicator.h"
#include "kumiko/train/hf.h"
#include "kumiko/train/trainer.h"
#include "kumiko_test_support.h"
#include "layout_compare.h"

namespace kumiko {
namespace {

std::string g_root;
const std::string kGolden = std::string(KUMIKO_SOURCE_DIR) + "/tests/golden/hf/llama";

config::Config tiny(const std::string& run_dir) {
  auto c = testing::tiny_config("llama", run_dir);
  c.model = train::hf::read_folder(kGolden).model;  // vocab 96, 4 heads over 2 kv heads
  c.train.steps = 10;
  c.train.global_batch = 8;
  c.train.lr = 3e-3;
  c.train.min_lr = 3e-4;
  c.train.init_from = g_root + "/llama.h5";
  c.backend.threads = 1;
  c.parallel.bucket_mb = 0.004;
  c.log.level = "error";
  return c;
}

TEST(HfLayouts, TrainedAtDp2Tp2ExportsAndImportsBitwise) {
  auto& world = comm::world();
  ASSERT_EQ(world.size(), 4);
  const int r = world.rank();
  auto solo = world.split(r, 0, "solo");
  const auto ref = testing::train_on(*solo, tiny(g_root + "/solo-" + std::to_string(r)));
  auto c = tiny(g_root + "/dp2-tp2");
  c.parallel.dp = c.parallel.tp = 2;
  const auto run = testing::train_on(world, c);
  testing::expect_same_run(run, ref, "dp2 x tp2 from the imported weights");
  if (r != 0) return;
  train::hf::export_folder(c.log.run_dir + "/weights_final.h5", g_root + "/exported", 1 << 30);
  const auto back = train::hf::read_folder(g_root + "/exported");
  ASSERT_EQ(back.values.size(), run.weights.size());
  for (size_t i = 0; i < back.values.size(); ++i) EXPECT_EQ(back.values[i], run.weights[i]) << run.names[i];
}

}  // namespace
}  // namespace kumiko

int main(int argc, char** argv) {
  std::string& root = kumiko::g_root;
  return kumiko::testing::mpi_test_main(argc, argv, "kumiko-hf", root, [&] {
    if (kumiko::comm::world().rank() == 0) kumiko::train::hf::import_folder(kumiko::kGolden, root + "/llama.h5");
  });
}
