// Parallel HDF5 checkpoints under mpirun -np 4 (checkpoint.writer = parallel: every
// rank writes its own shards into the one file, in the background):
//   - the file holds exactly the bytes of every dataset that rank 0 writes after
//     gathering (writer = gather), for dp2 x tp2 with ZeRO-1, pp2 x tp2 and pp2 x dp2;
//   - a checkpoint written by dp2 x tp2 resumes as pp2 x tp2 (each rank reading only its
//     shards) and follows the straight pp2 x tp2 run;
//   - in bf16, dp2 x tp2 resumes bitwise from its own parallel write.
// Without parallel HDF5 in the build the cases skip with a message.
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "kumiko/ckpt/h5file.h"
#include "kumiko/ckpt/store.h"
#include "kumiko/comm/communicator.h"
#include "kumiko/train/trainer.h"
#include "kumiko_test_support.h"
#include "layout_compare.h"

namespace kumiko {
namespace {

std::string g_root;

config::Config tiny(const std::string& arch, const std::string& run_dir) {
  auto c = testing::layout_config(arch, run_dir);
  c.train.steps = 6;
  return c;
}

struct Layout {
  const char* name;
  int dp, tp, pp, zero;
};

// Every dataset of both files, byte for byte (each read back through its checksum).
void expect_same_datasets(const std::string& got, const std::string& want, const std::string& what) {
  ckpt::H5Reader a(got), b(want);
  int compared = 0;
  for (const std::string group : {"/model", "/optim/m", "/optim/v", "/state"}) {
    const auto names = b.list(group);
    ASSERT_EQ(a.list(group), names) << what << " " << group;
    for (const auto& n : names) {
      const std::string name = group + "/" + n;
      EXPECT_EQ(a.shape(name), b.shape(name)) << what << " " << name;
      EXPECT_TRUE(a.read_raw(name) == b.read_raw(name)) << what << ": " << name << " differs";
      ++compared;
    }
  }
  // (/config differs: it records checkpoint.writer and checkpoint.async)
  EXPECT_EQ(a.attr_int("step"), b.attr_int("step")) << what;
  EXPECT_GT(compared, 30) << what;
}

// Runs c in run_dir until step 3 (train.stop_at) and returns that checkpoint's path.
std::string checkpoint_at_step3(comm::Communicator& world, const config::Config& c, const std::string& run_dir) {
  auto first = c;
  first.log.run_dir = run_dir;
  first.train.stop_at = 3;
  train::Trainer(first, world).run();
  world.barrier();
  return run_dir + "/checkpoints/step_00000003.h5";
}

bool skip_without_parallel_hdf5() { return !ckpt::H5Writer::parallel_available(); }

class ParallelCheckpoint : public ::testing::TestWithParam<std::string> {};

TEST_P(ParallelCheckpoint, EveryRankWritingGivesTheGatheredFile) {
  if (skip_without_parallel_hdf5()) GTEST_SKIP() << "SKIP: this build has serial HDF5";
  auto& world = comm::world();
  const std::string arch = GetParam();
  for (const Layout& l : {Layout{"dp2xtp2-zero1", 2, 2, 1, 1}, Layout{"pp2xtp2", 1, 2, 2, 0},
                          Layout{"pp2xdp2-zero1", 2, 1, 2, 1}}) {
    SCOPED_TRACE(arch + " " + l.name);
    const std::string base = g_root + "/" + arch + "-" + l.name;
    auto c = tiny(arch, base + "-gather");
    c.parallel.dp = l.dp;
    c.parallel.tp = l.tp;
    c.parallel.pp = l.pp;
    c.parallel.zero = l.zero;
    c.train.steps = 3;
    c.checkpoint.writer = "gather";
    c.checkpoint.async = false;
    train::Trainer(c, world).run();
    auto p = c;
    p.log.run_dir = base + "-parallel";
    p.checkpoint.writer = "parallel";
    p.checkpoint.async = true;
    p.checkpoint.every_steps = 1;  // three saves, each waiting for the one before
    train::Trainer(p, world).run();
    world.barrier();
    if (world.rank() != 0) continue;
    const std::string file = "/checkpoints/step_00000003.h5";
    expect_same_datasets(p.log.run_dir + file, c.log.run_dir + file, l.name);
    EXPECT_TRUE(ckpt::verify_file(p.log.run_dir + file).empty());
    ckpt::Store store(p.log.run_dir + "/checkpoints");
    ASSERT_TRUE(store.latest().has_value());
    EXPECT_EQ(ckpt::step_of(*store.latest()), 3);
  }
}

// dp2 x tp2 (ZeRO-1) writes step 3 in parallel; pp2 x tp2 resumes from it, every rank
// reading only the slabs of its own shards. It follows the straight dp2 x tp2 run (the
// first three steps are that run's; the last three differ by summation order only), and
// a resume into the layout that wrote the file is bitwise.
TEST_P(ParallelCheckpoint, ResumesIntoAnotherLayout) {
  if (skip_without_parallel_hdf5()) GTEST_SKIP() << "SKIP: this build has serial HDF5";
  auto& world = comm::world();
  const std::string arch = GetParam();
  const std::string base = g_root + "/" + arch + "-reshard";
  auto dp = tiny(arch, base + "-dp2tp2");
  dp.parallel.dp = 2;
  dp.parallel.tp = 2;
  dp.parallel.zero = 1;
  dp.checkpoint.writer = "parallel";
  const testing::LayoutResult straight = testing::train_on(world, dp);
  const std::string ckpt = checkpoint_at_step3(world, dp, base + "-first");

  auto pp = dp;
  pp.parallel.dp = 1;
  pp.parallel.pp = 2;
  pp.parallel.zero = 0;
  pp.log.run_dir = base + "-pp2tp2";
  pp.checkpoint.resume = ckpt;
  testing::LayoutResult r = testing::train_on(world, pp);
  r.losses.insert(r.losses.begin(), straight.losses.begin(), straight.losses.begin() + 3);
  testing::expect_same_run(r, straight, arch + " dp2 x tp2 (parallel write) -> pp2 x tp2 (parallel read)");

  auto same = dp;
  same.log.run_dir = base + "-same";
  same.checkpoint.resume = ckpt;
  testing::LayoutResult s = testing::train_on(world, same);
  s.losses.insert(s.losses.begin(), straight.losses.begin(), straight.losses.begin() + 3);
  EXPECT_EQ(s.losses, straight.losses) << arch << " dp2 x tp2 resumed from its own parallel write";
  EXPECT_EQ(s.weights, straight.weights) << arch << " dp2 x tp2 resumed from its own parallel write";
}

// backend.dtype = bf16, dp2 x tp2 with ZeRO-1: the checkpoint holds the fp32 master
// weights and the moments' shards; each rank rounds its bf16 working copy from what it
// read. Resuming in the layout that wrote the file continues bitwise.
TEST_P(ParallelCheckpoint, Bf16ResumesBitwiseInItsLayout) {
  if (skip_without_parallel_hdf5()) GTEST_SKIP() << "SKIP: this build has serial HDF5";
  auto& world = comm::world();
  const std::string arch = GetParam();
  const std::string base = g_root + "/" + arch + "-bf16";
  auto c = tiny(arch, base + "-straight");
  c.backend.dtype = "bf16";
  c.parallel.dp = 2;
  c.parallel.tp = 2;
  c.parallel.zero = 1;
  c.checkpoint.writer = "parallel";
  const testing::LayoutResult straight = testing::train_on(world, c);
  auto resumed = c;
  resumed.log.run_dir = base + "-resumed";
  resumed.checkpoint.resume = checkpoint_at_step3(world, c, base + "-first");
  testing::LayoutResult r = testing::train_on(world, resumed);
  ASSERT_EQ(r.losses.size() + 3, straight.losses.size());
  r.losses.insert(r.losses.begin(), straight.losses.begin(), straight.losses.begin() + 3);
  EXPECT_EQ(r.losses, straight.losses) << arch << " bf16 dp2 x tp2 resumed from its own parallel write";
  EXPECT_EQ(r.weights, straight.weights) << arch << " bf16 dp2 x tp2 resumed from its own parallel write";
  auto fp32 = c;  // and it was a bf16 run
  fp32.backend.dtype = "fp32";
  fp32.log.run_dir = base + "-fp32";
  fp32.train.stop_at = 1;
  const auto f = train::Trainer(fp32, world).run().losses;
  ASSERT_FALSE(f.empty());
  EXPECT_NE(f[0], straight.losses[0]) << arch;
}

INSTANTIATE_TEST_SUITE_P(Arch, ParallelCheckpoint, ::testing::Values("gpt2", "llama"));

}  // namespace
}  // namespace kumiko

int main(int argc, char** argv) {
  return kumiko::testing::mpi_test_main(argc, argv, "kumiko-pckpt", kumiko::g_root);
}
