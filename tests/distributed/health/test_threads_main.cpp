// set_rank_threads (train/threads.h) over two ranks on one host, with each rank's
// affinity mask set by the test: ranks that may run on the same CPUs split them
// (before, each took every CPU it could see: `mpirun --bind-to none -np 2` on 2 cores
// ran 4 threads and trained 6x slower), ranks bound apart keep their own CPUs, and
// asked-for threads beyond the host's CPUs are reported as oversubscribed.
#include <omp.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "kumiko/comm/communicator.h"
#include "kumiko/core/error.h"
#include "kumiko/train/threads.h"
#include "kumiko_test_support.h"

namespace kumiko {
namespace {

std::string g_root;

// No cgroup CPU quota: the test's expectations are about masks, and the machine
// running it may have a quota of its own.
constexpr double kNoQuota = 0.0;

// Restricts this process to `cpus` for the scope, then restores its mask and threads.
class Pinned {
 public:
  explicit Pinned(const std::vector<int>& cpus) {
    CPU_ZERO(&old_);
    sched_getaffinity(0, sizeof(old_), &old_);
    cpu_set_t set;
    CPU_ZERO(&set);
    for (int c : cpus) CPU_SET(c, &set);
    EXPECT_EQ(sched_setaffinity(0, sizeof(set), &set), 0);
  }
  ~Pinned() {
    sched_setaffinity(0, sizeof(old_), &old_);
    omp_set_num_threads(threads_);
  }

 private:
  cpu_set_t old_;
  int threads_ = omp_get_max_threads();
};

// Every CPU this process may be given: the launcher may have bound each rank to
// its own core, so the test first widens both masks to the same set. (CPUs outside
// the process's cpuset are dropped by the kernel; affinity_cpus() reads back what
// was set.)
std::vector<int> start_cpus() {
  std::vector<int> all;
  for (int c = 0; c < std::min<long>(sysconf(_SC_NPROCESSORS_ONLN), CPU_SETSIZE); ++c) all.push_back(c);
  cpu_set_t set;
  CPU_ZERO(&set);
  for (int c : all) CPU_SET(c, &set);
  cpu_set_t old;
  sched_getaffinity(0, sizeof(old), &old);
  sched_setaffinity(0, sizeof(set), &set);
  std::vector<int> cpus = train::affinity_cpus();
  sched_setaffinity(0, sizeof(old), &old);
  return cpus;
}

TEST(RankThreads, RanksOnTheSameCpusSplitThem) {
  auto& world = comm::world();
  ASSERT_EQ(world.size(), 2);
  unsetenv("OMP_NUM_THREADS");
  const std::vector<int> cpus = start_cpus();
  // Both ranks on every CPU: unbound ranks (mpirun --bind-to none, or srun without
  // --cpu-bind), as on a node where the launcher does not bind.
  Pinned pin(cpus);
  const train::ThreadPlan p = train::set_rank_threads(0, world, kNoQuota);
  const int n = static_cast<int>(cpus.size());
  EXPECT_EQ(p.node_ranks, 2);
  EXPECT_EQ(p.cpus, n);
  EXPECT_EQ(p.node_cpus, n);
  EXPECT_EQ(p.threads, std::max(1, n / 2));
  EXPECT_EQ(omp_get_max_threads(), p.threads);
  EXPECT_EQ(p.node_threads, 2 * p.threads);
  EXPECT_EQ(p.oversubscribed(), n < 2);
  EXPECT_EQ(p.node_leader, world.rank() == 0);
  EXPECT_NE(p.source.find("shared with up to 1 other rank(s)"), std::string::npos) << p.source;
}

TEST(RankThreads, RanksBoundApartKeepTheirCpus) {
  auto& world = comm::world();
  unsetenv("OMP_NUM_THREADS");
  const std::vector<int> cpus = start_cpus();
  const int n = static_cast<int>(cpus.size());
  if (n < 2) GTEST_SKIP() << "one CPU: two ranks cannot be bound apart";
  // Rank 0 on the first half, rank 1 on the rest (an odd count gives rank 1 more).
  const std::vector<int> mine = world.rank() == 0 ? std::vector<int>(cpus.begin(), cpus.begin() + n / 2)
                                                  : std::vector<int>(cpus.begin() + n / 2, cpus.end());
  Pinned pin(mine);
  const train::ThreadPlan p = train::set_rank_threads(0, world, kNoQuota);
  EXPECT_EQ(p.threads, static_cast<int>(mine.size()));
  EXPECT_EQ(p.node_threads, n);
  EXPECT_EQ(p.node_cpus, n);
  EXPECT_FALSE(p.oversubscribed());
  EXPECT_NE(p.source.find(" CPU(s) this rank may run on"), std::string::npos) << p.source;
}

TEST(RankThreads, AskedForThreadsAreKeptAndCounted) {
  auto& world = comm::world();
  const std::vector<int> cpus = start_cpus();
  const int n = static_cast<int>(cpus.size());
  Pinned pin(cpus);
  unsetenv("OMP_NUM_THREADS");
  const train::ThreadPlan configured = train::set_rank_threads(n, world, kNoQuota);
  EXPECT_EQ(configured.threads, n);
  EXPECT_EQ(configured.source, "backend.threads");
  EXPECT_EQ(configured.node_threads, 2 * n);
  EXPECT_TRUE(configured.oversubscribed());  // 2n threads on n CPUs
  setenv("OMP_NUM_THREADS", "1", 1);
  const train::ThreadPlan env = train::set_rank_threads(0, world, kNoQuota);
  EXPECT_EQ(env.threads, 1);
  EXPECT_EQ(env.source, "OMP_NUM_THREADS");
  EXPECT_EQ(env.oversubscribed(), n < 2);
  unsetenv("OMP_NUM_THREADS");
}

TEST(RankThreads, AQuotaIsSharedByTheRanksUnderIt) {
  auto& world = comm::world();
  unsetenv("OMP_NUM_THREADS");
  Pinned pin(start_cpus());
  // Both ranks under one cgroup with a 1-CPU quota: counted together, one thread
  // each, and together more than the quota allows.
  const train::ThreadPlan p = train::set_rank_threads(0, world, 1.0);
  EXPECT_EQ(p.quota_ranks, 2);
  EXPECT_EQ(p.threads, 1);
  EXPECT_TRUE(p.oversubscribed());
  if (p.node_threads <= p.node_cpus) {
    EXPECT_NE(train::oversubscription_warning(p).find("use fewer ranks in this container"), std::string::npos)
        << train::oversubscription_warning(p);
  }
}

TEST(RankThreads, ABadOmpNumThreadsOnOneRankEndsEveryRank) {
  auto& world = comm::world();
  Pinned pin(start_cpus());
  // Only rank 1 has the bad value; rank 0 must not wait for it in a collective.
  if (world.rank() == 1) setenv("OMP_NUM_THREADS", "four", 1);
  else unsetenv("OMP_NUM_THREADS");
  try {
    train::set_rank_threads(0, world, kNoQuota);
    ADD_FAILURE() << "rank " << world.rank() << " went on";
  } catch (const UserError& e) {
    const std::string expected = world.rank() == 1 ? "OMP_NUM_THREADS: expected a positive integer, got 'four'"
                                                   : "OMP_NUM_THREADS: another rank's value is not a positive integer";
    EXPECT_NE(std::string(e.what()).find(expected), std::string::npos) << e.what();
  }
  unsetenv("OMP_NUM_THREADS");
}

}  // namespace
}  // namespace kumiko

int main(int argc, char** argv) {
  return kumiko::testing::mpi_test_main(argc, argv, "kumiko-threads", kumiko::g_root);
}
