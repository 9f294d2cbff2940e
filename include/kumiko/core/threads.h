#pragma once
// OpenMP thread counts that do not need the communicator: OMP_NUM_THREADS, and the
// rule kumiko plan uses for a node it is not running on. The trainer measures each
// rank's real share of its CPUs (train/threads.h).

#include <cstdint>
#include <string>

namespace kumiko {

// OMP_NUM_THREADS's first number (nested lists: the outer level); 0 when unset. A
// value that is not a positive integer is a UserError naming it.
int omp_num_threads_env();

// The threads of one of `ranks` ranks sharing `cpus` CPUs: `configured` when > 0,
// else OMP_NUM_THREADS when set and `use_env` (planning this machine, not another),
// else cpus / ranks (at least 1).
int planned_threads(int configured, int cpus, int ranks, bool use_env = true);

// A cgroup CPU quota: the CPUs it gives (0 = none) and which cgroup sets it.
struct CpuQuota {
  double cpus = 0;
  // The cgroup directory that sets it, as (device, inode) folded into one number:
  // the same for every process under that cgroup, whatever its own (leaf) cgroup
  // and whether or not a cgroup namespace hides the path.
  uint64_t id = 0;
};

// This process's CPU quota: cgroup v2 `cpu.max`, v1 `cpu.cfs_quota_us /
// cpu.cfs_period_us`, the tightest along its cgroup's path up to the mount
// (containers: docker --cpus, Kubernetes CPU limits). The arguments name the files
// to read, for tests.
CpuQuota cgroup_cpu_quota(const std::string& proc_self_cgroup = "/proc/self/cgroup",
                          const std::string& sys_fs_cgroup = "/sys/fs/cgroup");

}  // namespace kumiko
