#include "kumiko/train/threads.h"

#include <omp.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

#include <spdlog/fmt/fmt.h>

#include "kumiko/comm/hosts.h"
#include "kumiko/core/error.h"
#include "kumiko/core/threads.h"

namespace kumiko::train {

std::vector<int> affinity_cpus() {
  // Sized for the machine, not CPU_SETSIZE: hosts with more than 1024 CPUs exist, and
  // the kernel's own limit may exceed the configured count (EINVAL: twice the size).
  const long configured = std::max(sysconf(_SC_NPROCESSORS_CONF), 1L);
  std::vector<int> cpus;
  for (int n = static_cast<int>(std::max(configured, 1024L)); n <= (1 << 20) && cpus.empty(); n *= 2) {
    cpu_set_t* set = CPU_ALLOC(n);
    if (set == nullptr) break;
    const size_t bytes = CPU_ALLOC_SIZE(n);
    CPU_ZERO_S(bytes, set);
    const bool read = sched_getaffinity(0, bytes, set) == 0;
    const int error = errno;
    if (read)
      for (int c = 0; c < n; ++c)
        if (CPU_ISSET_S(c, bytes, set)) cpus.push_back(c);
    CPU_FREE(set);
    if (read || error != EINVAL) break;
  }
  if (cpus.empty())  // no mask to read: every CPU OpenMP sees
    for (int c = 0; c < omp_get_num_procs(); ++c) cpus.push_back(c);
  return cpus;
}

int fair_share(const std::vector<int>& mine, const std::vector<int32_t>& ranks_on) {
  double share = 0;
  for (int c : mine) share += 1.0 / std::max(ranks_on.at(static_cast<size_t>(c)), 1);
  // 1e-9 absorbs the rounding of k/3 + k/3 + k/3 below k.
  return std::max(1, static_cast<int>(share + 1e-9));
}

ThreadPlan set_rank_threads(int configured, comm::Communicator& world, double cpu_quota) {
  ThreadPlan p;
  const std::vector<int> mine = affinity_cpus();
  p.cpus = static_cast<int>(mine.size());
  // A bad OMP_NUM_THREADS on some ranks only must not leave the others waiting in the
  // collectives below: every rank learns of it at the end.
  int env = 0;
  std::string env_error;
  try {
    env = configured > 0 ? 0 : omp_num_threads_env();
  } catch (const UserError& e) {
    env_error = e.what();
  }
  p.host = comm::host_name();
  auto node = comm::split_by_host(world);
  p.node_ranks = node->size();
  p.node_leader = node->rank() == 0;
  // How many of this node's ranks may run on each CPU.
  int32_t width = mine.back() + 1;
  node->all_reduce(&width, 1, comm::ReduceOp::max);
  std::vector<int32_t> ranks_on(static_cast<size_t>(width), 0);
  for (int c : mine) ranks_on[static_cast<size_t>(c)] = 1;
  node->all_reduce(ranks_on.data(), width, comm::ReduceOp::sum);
  p.node_cpus = static_cast<int>(std::count_if(ranks_on.begin(), ranks_on.end(), [](int32_t r) { return r > 0; }));
  // A cgroup CPU quota (a container's CPU limit) is shared by the machine's ranks
  // under the cgroup that sets it (one slot per rank holds that cgroup's id).
  const CpuQuota quota = cpu_quota < 0 ? cgroup_cpu_quota() : CpuQuota{cpu_quota, 1};
  p.cpu_quota = quota.cpus;
  std::vector<int64_t> groups(static_cast<size_t>(p.node_ranks), 0);
  const auto my_group = static_cast<int64_t>(quota.id >> 1) | 1;  // nonzero, and no sign overflow in the sum
  if (quota.cpus > 0) groups[static_cast<size_t>(node->rank())] = my_group;
  node->all_reduce(groups.data(), p.node_ranks, comm::ReduceOp::sum);
  p.quota_ranks = quota.cpus > 0 ? static_cast<int>(std::count(groups.begin(), groups.end(), my_group)) : 0;
  int32_t failed = !env_error.empty();
  world.all_reduce(&failed, 1, comm::ReduceOp::max);
  if (failed) throw UserError(env_error.empty() ? "OMP_NUM_THREADS: another rank's value is not a positive integer"
                                                : env_error);
  if (configured > 0) {
    p.threads = configured, p.source = "backend.threads";
  } else if (env > 0) {
    p.threads = env, p.source = "OMP_NUM_THREADS";
  } else {
    p.threads = fair_share(mine, ranks_on);
    int sharing = 1;
    for (int c : mine) sharing = std::max(sharing, ranks_on[static_cast<size_t>(c)]);
    p.source = sharing <= 1 ? "backend.threads = 0: the " + std::to_string(p.cpus) + " CPU(s) this rank may run on"
                            : "backend.threads = 0: this rank's share of the " + std::to_string(p.cpus) +
                                  " CPU(s) it may run on, shared with up to " + std::to_string(sharing - 1) +
                                  " other rank(s) on " + p.host;
    if (p.cpu_quota > 0) {
      const int cap = std::max(1, static_cast<int>(p.cpu_quota / p.quota_ranks + 1e-9));
      if (cap < p.threads)
        p.threads = cap, p.source += fmt::format(", capped by the cgroup CPU quota of {:g} CPU(s) shared by {} rank(s)",
                                                 p.cpu_quota, p.quota_ranks);
    }
  }
  p.node_threads = p.threads;
  node->all_reduce(&p.node_threads, 1, comm::ReduceOp::sum);
  omp_set_num_threads(p.threads);
  return p;
}

std::string oversubscription_warning(const ThreadPlan& p) {
  const bool shared = p.source.rfind("backend.threads = 0", 0) == 0;
  if (p.node_threads > p.node_cpus)
    return fmt::format("{}: its {} rank(s) run {} threads on {} CPU(s), so they take turns; {}", p.host, p.node_ranks,
                       p.node_threads, p.node_cpus,
                       shared ? "use fewer ranks per host"
                              : "leave backend.threads = 0 and OMP_NUM_THREADS unset to share the CPUs, or use "
                                "fewer threads");
  return fmt::format("{}: {} rank(s) run {} thread(s) each within a cgroup CPU quota of {:g} CPU(s), so they are "
                     "throttled; {}",
                     p.host, p.quota_ranks, p.threads, p.cpu_quota,
                     !shared ? "leave backend.threads = 0 and OMP_NUM_THREADS unset, or use fewer threads"
                     : p.quota_ranks > 1 ? "use fewer ranks in this container, or raise its CPU limit"
                                         : "raise the container's CPU limit to at least 1 CPU");
}

std::string one_process_warning(const ThreadPlan& p) {
  if (p.source.rfind("backend.threads = 0", 0) == 0)  // the default: only a quota below 1 CPU gets here
    return fmt::format("its 1 thread runs within a cgroup CPU quota of {:g} CPU(s), so it is throttled; raise the "
                       "container's CPU limit to at least 1 CPU",
                       p.cpu_quota);
  const bool over_cpus = p.threads > p.cpus;
  const bool over_quota = p.cpu_quota > 0 && p.threads > p.cpu_quota + 1e-9;
  const std::string quota = fmt::format("within a cgroup CPU quota of {:g} CPU(s)", p.cpu_quota);
  const std::string why = !over_cpus ? quota + ", so they are throttled"
                                     : fmt::format("on the {} CPU(s) this process may run on{}, so they take turns",
                                                   p.cpus, over_quota ? " and " + quota : "");
  const int fit = p.cpu_quota > 0 ? std::clamp(static_cast<int>(p.cpu_quota + 1e-9), 1, p.cpus) : p.cpus;
  const std::string asked = p.source == "OMP_NUM_THREADS" ? fmt::format("OMP_NUM_THREADS={}", p.threads)
                                                          : fmt::format("--threads {}", p.threads);
  return fmt::format("{} runs {} threads {}; use at most {} (--threads 0 with OMP_NUM_THREADS unset picks that)",
                     asked, p.threads, why, fit);
}

ThreadPlan set_threads(int configured, double cpu_quota) {
  // The same rule as a rank of a job, over a world of one.
  auto alone = comm::make_local();
  const ThreadPlan p = set_rank_threads(configured, *alone, cpu_quota);
  if (p.oversubscribed()) fmt::print(stderr, "warning: {}\n", one_process_warning(p));
  return p;
}

}  // namespace kumiko::train
