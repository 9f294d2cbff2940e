#pragma once
// Argument reading shared by the standalone C++ benchmarks in this folder (not part of
// the build; each includes this file by its own directory, so no -I is needed for it).
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>

namespace bench {

// A whole decimal number, or -1 if the argument is anything else: strtoll or atoi
// alone would read "1e8" as 1, "100M" as 100 and "x" as 0.
inline int64_t whole(const char* arg) {
  char* end = nullptr;
  errno = 0;
  const long long v = std::strtoll(arg, &end, 10);
  return end == arg || *end != '\0' || errno != 0 ? -1 : static_cast<int64_t>(v);
}

// `arg` as a whole number in [1, max]; otherwise one line naming `what` and exit 2.
inline int64_t positive(const char* program, const char* arg, const char* what, int64_t max) {
  const int64_t v = whole(arg);
  if (v < 1 || v > max) {
    std::fprintf(stderr, "%s: error: %s must be a whole number in 1..%lld, got '%s'\n", program,
                 what, static_cast<long long>(max), arg);
    std::exit(2);
  }
  return v;
}

}  // namespace bench
