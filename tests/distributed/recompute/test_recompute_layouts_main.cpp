// train.recompute under tensor parallelism (with sequence parallelism) and pipeline
// parallelism (1F1B and interleaved), two ranks: selective and full recomputation
// train to the same losses and final weights, bit for bit, as recompute = none in
// the same layout. (One process: tests/unit/model/test_recompute.cpp.)
#include <string>

#include <gtest/gtest.h>

#include "kumiko/comm/communicator.h"
#include "kumiko_test_support.h"
#include "layout_compare.h"

namespace kumiko {
namespace {

std::string g_root;

config::Config tiny(const std::string& arch, const std::string& run_dir) {
  auto c = testing::layout_config(arch, run_dir);
  c.train.micro_batch = 2;
  c.train.steps = 8;
  return c;
}

struct Layout {
  const char* name;
  int tp, pp, chunks;
  bool sp;
  const char* schedule;
};

class RecomputeLayouts : public ::testing::TestWithParam<std::string> {};

TEST_P(RecomputeLayouts, SameBitsAsWithoutRecomputation) {
  const std::string arch = GetParam();
  auto& world = comm::world();
  for (const Layout& l : {Layout{"tp2-sp", 2, 1, 1, true, "1f1b"}, Layout{"pp2-1f1b", 1, 2, 1, false, "1f1b"},
                          Layout{"pp2-interleaved", 1, 2, 2, false, "interleaved"}}) {
    testing::LayoutResult ref;
    for (const char* mode : {"none", "selective", "full"}) {
      auto c = tiny(arch, g_root + "/" + arch + "-" + l.name + "-" + mode);
      c.parallel.tp = l.tp;
      c.parallel.pp = l.pp;
      c.parallel.pp_chunks = l.chunks;
      c.parallel.pp_schedule = l.schedule;
      c.parallel.sequence_parallel = l.sp;
      c.train.recompute = mode;
      const testing::LayoutResult r = testing::train_on(world, c);
      const std::string what = arch + " " + l.name + " recompute=" + mode;
      ASSERT_EQ(r.losses.size(), 8u) << what;
      if (std::string(mode) == "none") {
        ref = r;
        continue;
      }
      EXPECT_EQ(r.losses, ref.losses) << what;
      for (size_t i = 0; i < r.weights.size(); ++i) EXPECT_EQ(r.weights[i], ref.weights[i]) << what << " " << r.names[i];
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Arch, RecomputeLayouts, ::testing::Values("gpt2", "llama"));

}  // namespace
}  // namespace kumiko

int main(int argc, char** argv) {
  return kumiko::testing::mpi_test_main(argc, argv, "kumiko-recompute", kumiko::g_root);
}
