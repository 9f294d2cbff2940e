// dp = 2 on two GPUs against one GPU: 20 steps of the tiny gpt2 and llama models in
// fp32, losses and final weights within 1e-5 relative (only the reduction order
// differs), with buckets small enough that several all-reduces overlap backward.
// Runs under mpirun -np 2; skips unless every rank has its own GPU (NCCL does not
// allow two ranks of one communicator on the same device).
#include <gtest/gtest.h>

#include "kumiko/comm/communicator.h"
#include "kumiko/core/log.h"
#include "kumiko/gpu/model.h"
#include "kumiko/train/trainer.h"
#include "kumiko_test_support.h"
#include "layout_compare.h"

namespace kumiko {
namespace {

std::string g_root;

config::Config tiny(const std::string& arch, const std::string& run_dir) {
  auto c = testing::tiny_config(arch, run_dir);
  c.model.d_model = 64;  // head dim 16: a multiple of 8 as the GPU kernels need
  c.train.global_batch = 8;
  c.backend.device = "cuda";
  c.parallel.bucket_mb = 0.004;
  c.log.level = "error";
  return c;
}

class GpuDataParallel : public ::testing::TestWithParam<std::string> {};

TEST_P(GpuDataParallel, MatchesOneGpu) {
  auto& world = comm::world();
  // Every rank decides alike (the fewest GPUs any rank sees), so none waits alone.
  int32_t missing = gpu::visible_devices() < world.size();
  world.all_reduce(&missing, 1, comm::ReduceOp::max);
  if (missing)
    GTEST_SKIP() << "SKIP: " << world.size() << " ranks need " << world.size() << " GPUs, "
                 << gpu::visible_devices() << " visible";
  const std::string arch = GetParam();
  const int r = world.rank();
  auto solo = world.split(r, 0, "solo");
  testing::LayoutResult ref;
  if (r == 0) ref = testing::train_on(*solo, tiny(arch, g_root + "/" + arch + "-one"));
  auto c = tiny(arch, g_root + "/" + arch + "-dp2");
  c.parallel.dp = 2;
  const auto dp2 = testing::train_on(world, c);
  if (r == 0) testing::expect_same_run(dp2, ref, arch + " dp=2 on 2 GPUs");
}

INSTANTIATE_TEST_SUITE_P(Arch, GpuDataParallel, ::testing::Values("gpt2", "llama"));

}  // namespace
}  // namespace kumiko

int main(int argc, char** argv) { return kumiko::testing::mpi_test_main(argc, argv, "kumiko-gpu-dp", kumiko::g_root); }
