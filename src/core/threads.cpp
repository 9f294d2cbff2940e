#include "kumiko/core/threads.h"

#include <algorithm>
#include <cstdlib>
#include <string_view>

#include "kumiko/core/error.h"

namespace kumiko {

int omp_num_threads_env() {
  const char* v = std::getenv("OMP_NUM_THREADS");
  if (v == nullptr || *v == '\0') return 0;
  const std::string_view text(v);
  const std::string_view first = text.substr(0, text.find(','));
  bool ok = !first.empty() && first.size() < 8;
  int n = 0;
  for (char ch : first) {
    ok = ok && ch >= '0' && ch <= '9';
    if (ok) n = n * 10 + (ch - '0');
  }
  KUMIKO_USER_CHECK(ok && n > 0, "OMP_NUM_THREADS: expected a positive integer, got '", text, "'");
  return n;
}

int planned_threads(int configured, int cpus, int ranks) {
  if (configured > 0) return configured;
  if (const int env = omp_num_threads_env(); env > 0) return env;
  return std::max(1, cpus / std::max(1, ranks));
}

}  // namespace kumiko
