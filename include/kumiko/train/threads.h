#pragma once
// How many OpenMP threads each rank runs (kumiko's kernels, oneDNN and OpenBLAS
// share one pool). backend.threads wins; then OMP_NUM_THREADS; otherwise each rank
// takes its fair share of the CPUs it may run on, counting the other ranks on its
// node that may run on the same CPUs, and at most its part of a cgroup CPU quota
// (a container's CPU limit). So `mpirun --bind-to none -np 4` on a
// 48-core node gives 12 threads a rank, not 48 (4x oversubscribed), and
// `--bind-to core` gives each rank its own cores.
#include <string>
#include <vector>

#include "kumiko/comm/communicator.h"

namespace kumiko::train {

struct ThreadPlan {
  int threads = 1;      // this rank's OpenMP threads
  std::string source;   // where the number came from, for the log
  int cpus = 1;         // CPUs this rank may run on (its affinity mask)
  int node_ranks = 1;   // ranks on this rank's host
  int node_threads = 1; // threads of all of them together
  int node_cpus = 1;    // CPUs at least one of them may run on
  double cpu_quota = 0; // this rank's cgroup CPU quota in CPUs (0 = none)
  int quota_ranks = 0;  // the host's ranks in that cgroup, this one included
  std::string host;
  bool node_leader = true;  // the first rank on its host
  // More threads than CPUs on the host, or than the rank's cgroup quota allows.
  bool oversubscribed() const {
    return node_threads > node_cpus || (cpu_quota > 0 && threads * quota_ranks > cpu_quota + 1e-9);
  }
};

// The CPUs this process may run on (sched_getaffinity), as CPU numbers.
std::vector<int> affinity_cpus();

// This rank's share of `mine` when ranks_on[c] ranks (this one included) may run
// on CPU c: the sum over its CPUs of 1 / ranks_on[c], rounded down, at least 1.
int fair_share(const std::vector<int>& mine, const std::vector<int32_t>& ranks_on);

// Chooses this rank's threads (see the top of this file) and sets OpenMP's count.
// Collective over `world`: every rank of the job calls it. `cpu_quota` < 0 reads this
// process's cgroup quota; tests pass one (0 = none).
ThreadPlan set_rank_threads(int configured, comm::Communicator& world, double cpu_quota = -1);

// For an oversubscribed plan: one line saying where and what to change.
std::string oversubscription_warning(const ThreadPlan& p);

// One process (kumiko bench, kumiko sample): set_rank_threads over a world of one,
// i.e. configured (their --threads), else OMP_NUM_THREADS, else every CPU of its
// affinity mask, within a cgroup CPU quota. An oversubscribed plan is warned of on
// stderr (one_process_warning). `cpu_quota` as for set_rank_threads.
ThreadPlan set_threads(int configured, double cpu_quota = -1);

// For an oversubscribed one-process plan: one line naming what asked for the threads
// (--threads or OMP_NUM_THREADS), why they are too many, and the most that fit.
std::string one_process_warning(const ThreadPlan& p);

}  // namespace kumiko::train
