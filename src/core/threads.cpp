#include "kumiko/core/threads.h"

#include <sys/stat.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string_view>
#include <vector>

#include "kumiko/core/error.h"

namespace kumiko {

int omp_num_threads_env() {
  const char* v = std::getenv("OMP_NUM_THREADS");
  if (v == nullptr || *v == '\0') return 0;
  const std::string_view text(v);
  std::string_view first = text.substr(0, text.find(','));
  // libgomp allows spaces around the number.
  while (!first.empty() && (first.front() == ' ' || first.front() == '\t')) first.remove_prefix(1);
  while (!first.empty() && (first.back() == ' ' || first.back() == '\t')) first.remove_suffix(1);
  bool ok = !first.empty();
  int n = 0;
  for (char ch : first) {
    ok = ok && ch >= '0' && ch <= '9' && n <= 1000000;
    if (ok) n = n * 10 + (ch - '0');
  }
  KUMIKO_USER_CHECK(ok && n > 0, "OMP_NUM_THREADS: expected a positive integer, got '", text, "'");
  return n;
}

int planned_threads(int configured, int cpus, int ranks, bool use_env) {
  if (configured > 0) return configured;
  if (const int env = use_env ? omp_num_threads_env() : 0; env > 0) return env;
  return std::max(1, cpus / std::max(1, ranks));
}

namespace {

// The quota in CPUs that `dir` sets, or 0 (none, or no such files).
double quota_in(const std::filesystem::path& dir, bool v2) {
  if (v2) {
    std::ifstream in(dir / "cpu.max");
    std::string quota;
    double period = 0;
    if (!(in >> quota >> period) || quota == "max" || period <= 0) return 0;
    return std::max(0.0, std::strtod(quota.c_str(), nullptr) / period);
  }
  std::ifstream q(dir / "cpu.cfs_quota_us"), p(dir / "cpu.cfs_period_us");
  double quota = -1, period = 0;
  if (!(q >> quota) || !(p >> period) || quota <= 0 || period <= 0) return 0;
  return quota / period;
}

}  // namespace

CpuQuota cgroup_cpu_quota(const std::string& proc_self_cgroup, const std::string& sys_fs_cgroup) {
  namespace fs = std::filesystem;
  std::ifstream in(proc_self_cgroup);
  CpuQuota tightest;
  for (std::string line; std::getline(in, line);) {
    // "hierarchy-id:controllers:path"; v2 is "0::path".
    const auto a = line.find(':'), b = line.find(':', a == std::string::npos ? a : a + 1);
    if (a == std::string::npos || b == std::string::npos) continue;
    const std::string controllers = line.substr(a + 1, b - a - 1);
    const bool v2 = line.compare(0, a, "0") == 0 && controllers.empty();
    std::vector<fs::path> mounts;
    if (v2) {
      mounts = {fs::path(sys_fs_cgroup), fs::path(sys_fs_cgroup) / "unified"};
    } else {
      std::stringstream names(controllers);
      bool cpu = false;
      for (std::string c; std::getline(names, c, ',');) cpu = cpu || c == "cpu";
      if (!cpu) continue;
      mounts = {fs::path(sys_fs_cgroup) / controllers, fs::path(sys_fs_cgroup) / "cpu"};
    }
    // From the process's own cgroup up to the mount: a container sees its own cgroup
    // at the mount while /proc names the host's path, so every level is tried.
    for (const auto& mount : mounts) {
      fs::path rel = fs::path(line.substr(b + 1)).relative_path();
      while (true) {
        const fs::path dir = mount / rel;
        const double q = quota_in(dir, v2);
        struct stat st {};
        if (q > 0 && (tightest.cpus == 0 || q < tightest.cpus) && ::stat(dir.c_str(), &st) == 0)
          tightest = {q, static_cast<uint64_t>(st.st_dev) * 0x9E3779B97F4A7C15ull ^ static_cast<uint64_t>(st.st_ino)};
        if (rel.empty()) break;
        rel = rel.parent_path();
      }
    }
  }
  return tightest;
}

}  // namespace kumiko
