// Thread counts (core/threads.h, train/threads.h) in one process: the fair share of
// CPUs that several ranks may run on, OMP_NUM_THREADS's parsing, the planner's rule,
// and set_rank_threads over a one-rank world. tests/distributed/health/test_threads_main.cpp
// runs set_rank_threads over two ranks with their affinity masks set.
#include <omp.h>

#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <spdlog/fmt/fmt.h>

#include "kumiko/comm/communicator.h"
#include "kumiko/core/error.h"
#include "kumiko/core/threads.h"
#include "kumiko/train/threads.h"

namespace kumiko {
namespace {

// Sets OMP_NUM_THREADS (or unsets it, for nullptr) and restores it afterwards.
class EnvThreads {
 public:
  explicit EnvThreads(const char* value) {
    if (const char* old = std::getenv("OMP_NUM_THREADS")) old_ = old, had_ = true;
    value ? setenv("OMP_NUM_THREADS", value, 1) : unsetenv("OMP_NUM_THREADS");
  }
  ~EnvThreads() { had_ ? setenv("OMP_NUM_THREADS", old_.c_str(), 1) : unsetenv("OMP_NUM_THREADS"); }

 private:
  std::string old_;
  bool had_ = false;
};

TEST(Threads, FairShareDividesEachCpuAmongTheRanksOnIt) {
  // 8 CPUs: rank A may run on 0-3, rank B on 0-7. CPUs 0-3 have 2 ranks, 4-7 one.
  const std::vector<int32_t> ranks_on = {2, 2, 2, 2, 1, 1, 1, 1};
  EXPECT_EQ(train::fair_share({0, 1, 2, 3}, ranks_on), 2);
  EXPECT_EQ(train::fair_share({0, 1, 2, 3, 4, 5, 6, 7}, ranks_on), 6);  // 2 + 4: the node's 8 CPUs, no more
  // Unbound: 4 ranks on 48 CPUs get 12 each, not 48.
  const std::vector<int32_t> four(48, 4);
  std::vector<int> all(48);
  for (int c = 0; c < 48; ++c) all[c] = c;
  EXPECT_EQ(train::fair_share(all, four), 12);
  // 3 ranks on 9 CPUs: 9 x (1/3) is 3 exactly, not 2.999... rounded down.
  EXPECT_EQ(train::fair_share({0, 1, 2, 3, 4, 5, 6, 7, 8}, std::vector<int32_t>(9, 3)), 3);
  // 5 ranks on 2 CPUs: each still runs one thread.
  EXPECT_EQ(train::fair_share({0, 1}, {5, 5}), 1);
  // Bound to its own cores: all of them.
  EXPECT_EQ(train::fair_share({4, 5}, {1, 1, 1, 1, 1, 1}), 2);
}

TEST(Threads, OmpNumThreadsIsParsedOrRefusedByName) {
  {
    EnvThreads env(nullptr);
    EXPECT_EQ(omp_num_threads_env(), 0);
  }
  {
    EnvThreads env("12");
    EXPECT_EQ(omp_num_threads_env(), 12);
  }
  {
    EnvThreads env("6,2");  // nested levels: the outer one
    EXPECT_EQ(omp_num_threads_env(), 6);
  }
  {
    EnvThreads env(" 8 ");  // libgomp allows spaces
    EXPECT_EQ(omp_num_threads_env(), 8);
  }
  for (const char* bad : {"0", "-3", "four", "4x", ",2", " ", "123456789012"}) {
    EnvThreads env(bad);
    try {
      omp_num_threads_env();
      ADD_FAILURE() << "OMP_NUM_THREADS=" << bad << " was accepted";
    } catch (const UserError& e) {
      const std::string expected = "OMP_NUM_THREADS: expected a positive integer, got '" + std::string(bad) + "'";
      EXPECT_NE(std::string(e.what()).find(expected), std::string::npos)
          << e.what();
    }
  }
}

TEST(Threads, PlannedThreadsTakeTheConfigThenTheEnvironmentThenTheShare) {
  EnvThreads env(nullptr);
  EXPECT_EQ(planned_threads(0, 48, 4), 12);
  EXPECT_EQ(planned_threads(0, 2, 4), 1);
  EXPECT_EQ(planned_threads(3, 48, 4), 3);
  EnvThreads set("5");
  EXPECT_EQ(planned_threads(0, 48, 4), 5);
  EXPECT_EQ(planned_threads(3, 48, 4), 3);
  // Planning another machine (kumiko plan --cores/--nodes): this one's variable is not its.
  EXPECT_EQ(planned_threads(0, 48, 4, /*use_env=*/false), 12);
}

// A fake /proc/self/cgroup and /sys/fs/cgroup under a temporary folder.
class FakeCgroup {
 public:
  FakeCgroup()
      : root_(std::filesystem::temp_directory_path() /
              ("kumiko-cgroup-" + std::to_string(::getpid()) + "-" + std::to_string(count_++))) {
    std::filesystem::remove_all(root_);
    std::filesystem::create_directories(root_ / "sys");
  }
  ~FakeCgroup() { std::filesystem::remove_all(root_); }
  void proc(const std::string& text) const { std::ofstream(root_ / "cgroup") << text; }
  void file(const std::string& rel, const std::string& text) const {
    std::filesystem::create_directories((root_ / "sys" / rel).parent_path());
    std::ofstream(root_ / "sys" / rel) << text;
  }
  CpuQuota read() const { return cgroup_cpu_quota((root_ / "cgroup").string(), (root_ / "sys").string()); }
  double quota() const { return read().cpus; }

 private:
  static inline int count_ = 0;  // each instance its own folder
  std::filesystem::path root_;
};

TEST(Threads, CgroupQuotaIsReadFromV2AndV1) {
  {  // v2, the process's own cgroup: 250000 / 100000 = 2.5 CPUs.
    FakeCgroup fs;
    fs.proc("0::/kubepods/pod1/c1\n");
    fs.file("kubepods/pod1/c1/cpu.max", "250000 100000\n");
    EXPECT_DOUBLE_EQ(fs.quota(), 2.5);
  }
  {  // v2, the tightest along the path; "max" is no limit.
    FakeCgroup fs;
    fs.proc("0::/a/b\n");
    fs.file("a/b/cpu.max", "max 100000\n");
    fs.file("a/cpu.max", "400000 100000\n");
    fs.file("cpu.max", "800000 100000\n");
    EXPECT_DOUBLE_EQ(fs.quota(), 4.0);
  }
  {  // v2 in a container: /proc names the host's path, the mount holds the container's cgroup.
    FakeCgroup fs;
    fs.proc("0::/system.slice/docker-abc.scope\n");
    fs.file("cpu.max", "150000 100000\n");
    EXPECT_DOUBLE_EQ(fs.quota(), 1.5);
  }
  {  // v1 with cpu and cpuacct joined; -1 is no limit.
    FakeCgroup fs;
    fs.proc("4:memory:/x\n3:cpu,cpuacct:/docker/abc\n");
    fs.file("cpu,cpuacct/docker/abc/cpu.cfs_quota_us", "300000\n");
    fs.file("cpu,cpuacct/docker/abc/cpu.cfs_period_us", "100000\n");
    fs.file("cpu,cpuacct/cpu.cfs_quota_us", "-1\n");
    fs.file("cpu,cpuacct/cpu.cfs_period_us", "100000\n");
    EXPECT_DOUBLE_EQ(fs.quota(), 3.0);
  }
  {  // Which cgroup sets the quota: two leaves under one limited parent share it, a
     // leaf with its own tighter limit does not.
    FakeCgroup fs;
    fs.file("job/cpu.max", "400000 100000\n");
    fs.file("job/task0/cpu.max", "max 100000\n");
    fs.file("job/task1/cpu.max", "max 100000\n");
    fs.file("job/task2/cpu.max", "100000 100000\n");
    fs.proc("0::/job/task0\n");
    const CpuQuota t0 = fs.read();
    fs.proc("0::/job/task1\n");
    const CpuQuota t1 = fs.read();
    fs.proc("0::/job/task2\n");
    const CpuQuota t2 = fs.read();
    EXPECT_DOUBLE_EQ(t0.cpus, 4.0);
    EXPECT_DOUBLE_EQ(t2.cpus, 1.0);
    EXPECT_NE(t0.id, 0u);
    EXPECT_EQ(t0.id, t1.id);
    EXPECT_NE(t0.id, t2.id);
  }
  {  // No limit anywhere, or no cgroup files at all.
    FakeCgroup fs;
    fs.proc("1:cpu:/\n0::/\n");
    fs.file("cpu/cpu.cfs_quota_us", "-1\n");
    fs.file("cpu/cpu.cfs_period_us", "100000\n");
    EXPECT_EQ(fs.quota(), 0.0);
    FakeCgroup none;
    EXPECT_EQ(none.quota(), 0.0);
  }
}

TEST(Threads, OneRankTakesEveryCpuOfItsMask) {
  EnvThreads env(nullptr);
  auto world = comm::make_local();
  const int saved = omp_get_max_threads();
  const train::ThreadPlan p = train::set_rank_threads(0, *world);
  const int cpus = static_cast<int>(train::affinity_cpus().size());
  // Within this machine's own cgroup CPU quota, if it has one.
  const double quota = cgroup_cpu_quota().cpus;
  const int expect = quota > 0 ? std::min(cpus, std::max(1, static_cast<int>(quota + 1e-9))) : cpus;
  EXPECT_EQ(p.threads, expect);
  EXPECT_EQ(omp_get_max_threads(), expect);
  EXPECT_EQ(p.cpus, cpus);
  EXPECT_EQ(p.node_ranks, 1);
  EXPECT_EQ(p.node_threads, expect);
  EXPECT_EQ(p.node_cpus, cpus);
  EXPECT_EQ(p.oversubscribed(), quota > 0 && quota < 1);  // one thread is more than a quota below 1 CPU
  EXPECT_TRUE(p.node_leader);
  // More threads than CPUs, asked for: given, and called oversubscribed.
  const train::ThreadPlan more = train::set_rank_threads(cpus + 1, *world);
  EXPECT_EQ(more.threads, cpus + 1);
  EXPECT_EQ(more.source, "backend.threads");
  EXPECT_TRUE(more.oversubscribed());
  EXPECT_NE(train::oversubscription_warning(more).find("so they take turns; leave backend.threads = 0"),
            std::string::npos)
      << train::oversubscription_warning(more);
  omp_set_num_threads(saved);
}

TEST(Threads, OneProcessTakesTheSameRule) {
  EnvThreads env(nullptr);
  const int saved = omp_get_max_threads();
  auto world = comm::make_local();
  const int rule = train::set_rank_threads(0, *world).threads;
  omp_set_num_threads(saved + 7);
  train::set_threads(0);
  EXPECT_EQ(omp_get_max_threads(), rule);
  train::set_threads(3);
  EXPECT_EQ(omp_get_max_threads(), 3);
  EnvThreads set("2");
  train::set_threads(0);
  EXPECT_EQ(omp_get_max_threads(), 2);
  omp_set_num_threads(saved);
}

TEST(Threads, OneProcessWarnsOfTooManyThreads) {
  EnvThreads env(nullptr);
  const int saved = omp_get_max_threads();
  const int cpus = static_cast<int>(train::affinity_cpus().size());
  // No quota: its CPUs fit, silently; one more is warned of on stderr, with the most that fit.
  ::testing::internal::CaptureStderr();
  EXPECT_FALSE(train::set_threads(cpus, 0).oversubscribed());
  EXPECT_EQ(::testing::internal::GetCapturedStderr(), "");
  ::testing::internal::CaptureStderr();
  const train::ThreadPlan more = train::set_threads(cpus + 1, 0);
  const std::string printed = ::testing::internal::GetCapturedStderr();
  EXPECT_TRUE(more.oversubscribed());
  EXPECT_EQ(train::one_process_warning(more),
            fmt::format("--threads {0} runs {0} threads on the {1} CPU(s) this process may run on, so they take "
                        "turns; use at most {1} (--threads 0 with OMP_NUM_THREADS unset picks that)",
                        cpus + 1, cpus));
  EXPECT_EQ(printed, "warning: " + train::one_process_warning(more) + "\n");
  // More threads than CPUs and than a quota of 1 CPU: both named, the quota's limit given.
  EXPECT_EQ(train::one_process_warning(train::set_threads(cpus + 1, 1.0)),
            fmt::format("--threads {0} runs {0} threads on the {1} CPU(s) this process may run on and within a "
                        "cgroup CPU quota of 1 CPU(s), so they take turns; use at most 1 (--threads 0 with "
                        "OMP_NUM_THREADS unset picks that)",
                        cpus + 1, cpus));
  {
    EnvThreads set(std::to_string(cpus + 2).c_str());
    const train::ThreadPlan env_more = train::set_threads(0, 0);
    EXPECT_NE(train::one_process_warning(env_more).find(fmt::format("OMP_NUM_THREADS={0} runs {0} threads", cpus + 2)),
              std::string::npos)
        << train::one_process_warning(env_more);
  }
  // A quota of 1 CPU: two threads are throttled (where the mask has two CPUs).
  if (cpus >= 2) {
    const train::ThreadPlan throttled = train::set_threads(2, 1.0);
    EXPECT_TRUE(throttled.oversubscribed());
    EXPECT_EQ(train::one_process_warning(throttled),
              "--threads 2 runs 2 threads within a cgroup CPU quota of 1 CPU(s), so they are throttled; use at most "
              "1 (--threads 0 with OMP_NUM_THREADS unset picks that)");
  }
  // The default under a quota below 1 CPU.
  const train::ThreadPlan below = train::set_threads(0, 0.5);
  EXPECT_TRUE(below.oversubscribed());
  EXPECT_EQ(train::one_process_warning(below).rfind(
                "its 1 thread runs within a cgroup CPU quota of 0.5 CPU(s), so it is throttled", 0),
            0u)
      << train::one_process_warning(below);
  EXPECT_NE(train::one_process_warning(below).find("raise the container's CPU limit"), std::string::npos);
  omp_set_num_threads(saved);
}

TEST(Threads, ACgroupQuotaCapsTheShare) {
  EnvThreads env(nullptr);
  auto world = comm::make_local();
  const int saved = omp_get_max_threads();
  const int cpus = static_cast<int>(train::affinity_cpus().size());
  // A quota of 1.5 CPUs: one thread (rounded down), named in the source.
  const train::ThreadPlan p = train::set_rank_threads(0, *world, 1.5);
  EXPECT_EQ(p.threads, 1);
  EXPECT_EQ(p.quota_ranks, 1);
  EXPECT_FALSE(p.oversubscribed());
  if (cpus > 1) {
    EXPECT_NE(p.source.find("capped by the cgroup CPU quota of 1.5 CPU(s) shared by 1 rank(s)"), std::string::npos)
        << p.source;
  }
  // A quota above the mask: the mask.
  EXPECT_EQ(train::set_rank_threads(0, *world, cpus + 4.0).threads, cpus);
  // Asked-for threads are kept, and beyond the quota are throttled.
  const train::ThreadPlan asked = train::set_rank_threads(2, *world, 1.0);
  EXPECT_EQ(asked.threads, 2);
  EXPECT_TRUE(asked.oversubscribed());
  if (cpus >= 2) {
    const std::string warning = train::oversubscription_warning(asked);
    EXPECT_NE(warning.find("within a cgroup CPU quota of 1 CPU(s), so they are throttled; leave"), std::string::npos)
        << warning;
  }
  omp_set_num_threads(saved);
}

}  // namespace
}  // namespace kumiko
