#pragma once
// Helpers for the CPU kernel tests: seeded random data, NaN poisoning, tolerant
// comparison against a double reference, and thread-count control.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "kumiko/core/bf16.h"

namespace kumiko::test {

template <typename T = float>
std::vector<T> random_vec(size_t n, uint32_t seed, double stddev = 1.0, double mean = 0.0) {
  std::mt19937 gen(seed);
  std::normal_distribution<double> dist(mean, stddev);
  std::vector<T> v(n);
  for (auto& x : v) x = static_cast<T>(dist(gen));
  return v;
}

// Normal samples rounded to bf16 (to nearest even).
inline std::vector<bf16> random_bf16(size_t n, uint32_t seed, double stddev = 1.0) {
  const auto f = random_vec<float>(n, seed, stddev);
  std::vector<bf16> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = to_bf16(f[i]);
  return v;
}

inline std::vector<int32_t> random_ids(size_t n, int32_t hi, uint32_t seed) {
  std::mt19937 gen(seed);
  std::uniform_int_distribution<int32_t> dist(0, hi - 1);
  std::vector<int32_t> v(n);
  for (auto& x : v) x = dist(gen);
  return v;
}

template <typename T>
std::vector<T> poisoned(size_t n) {
  return std::vector<T>(n, std::numeric_limits<T>::quiet_NaN());
}

template <typename To, typename From>
std::vector<To> cast_vec(const std::vector<From>& v) {
  return std::vector<To>(v.begin(), v.end());
}

// Every element within rtol of the reference, relative to |ref| + rms(ref) (so that
// entries near zero are judged on the scale of the whole array). NaN fails.
template <typename A, typename R>
void expect_close(const std::vector<A>& got, const std::vector<R>& ref, double rtol,
                  const std::string& what) {
  ASSERT_EQ(got.size(), ref.size()) << what;
  double ss = 0;
  for (auto r : ref) ss += double(r) * double(r);
  const double rms = ref.empty() ? 0.0 : std::sqrt(ss / double(ref.size()));
  size_t bad = 0;
  double worst = 0;
  size_t worst_i = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double err = std::abs(double(got[i]) - double(ref[i])) / (std::abs(double(ref[i])) + rms);
    if (!(err <= rtol)) {
      ++bad;
      if (!(err <= worst)) {
        worst = err;
        worst_i = i;
      }
    }
  }
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " of " << got.size() << " elements off; worst at "
                     << worst_i << ": got " << got[worst_i] << " want " << ref[worst_i]
                     << " (rel " << worst << ")";
}

template <typename T>
void expect_bitwise_equal(const std::vector<T>& a, const std::vector<T>& b,
                          const std::string& what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  size_t bad = 0;
  for (size_t i = 0; i < a.size(); ++i) bad += std::memcmp(&a[i], &b[i], sizeof(T)) != 0;
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " elements differ between identical calls";
}

// Runs fn with n OpenMP threads, restoring the previous setting.
template <typename F>
void with_threads(int n, F&& fn) {
  const int before = omp_get_max_threads();
  omp_set_num_threads(n);
  fn();
  omp_set_num_threads(before);
}

// Two float sums of the same K terms in different orders differ by at most
// 2 gamma_K sum|terms|, gamma_K = K u / (1 - K u), u = 2^-24 (Higham, Accuracy and
// Stability of Numerical Algorithms, 2nd ed., sec. 3.1). Given sum|terms| per output
// (`magnitude`), the bound per output.
inline std::vector<double> reorder_bound(int64_t K, const std::vector<double>& magnitude) {
  const double u = std::ldexp(1.0, -24), gamma = K * u / (1 - K * u);
  std::vector<double> bound(magnitude.size());
  for (size_t i = 0; i < bound.size(); ++i) bound[i] = 2 * gamma * magnitude[i];
  return bound;
}

// Every |got - ref| within bound (per element). NaN fails.
template <typename T>
void expect_within(const std::vector<T>& got, const std::vector<T>& ref, const std::vector<double>& bound,
                   const std::string& what) {
  ASSERT_EQ(got.size(), ref.size()) << what;
  ASSERT_EQ(bound.size(), ref.size()) << what;
  size_t bad = 0, worst_i = 0;
  double worst = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double err = std::abs(double(got[i]) - double(ref[i]));
    if (!(err <= bound[i])) {
      ++bad;
      if (!(err / bound[i] <= worst)) worst = err / bound[i], worst_i = i;
    }
  }
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " of " << got.size() << " elements beyond the bound; worst at "
                     << worst_i << ": " << got[worst_i] << " vs " << ref[worst_i] << " (bound " << bound[worst_i]
                     << ")";
}

// The determinism kumiko promises on the CPU (docs/testing.md): the same inputs and
// thread count give the same bits; kumiko's own kernels give the same bits for any
// thread count (their reductions are split by problem size, never by thread count);
// a GEMM (OpenBLAS) may partition its work by thread count, so between thread counts
// its outputs differ by at most reorder_bound. fn() -> outputs: two calls with 2
// threads agree bitwise, and 1 vs 2 threads within `bound` per element (empty:
// bitwise).
template <typename F>
void check_determinism(F&& fn, const std::string& what, const std::vector<double>& bound = {}) {
  std::vector<float> a, b, c;
  with_threads(2, [&] { a = fn(); });
  with_threads(2, [&] { b = fn(); });
  with_threads(1, [&] { c = fn(); });
  expect_bitwise_equal(a, b, what);
  if (bound.empty())
    expect_bitwise_equal(c, a, what + " (1 vs 2 threads)");
  else
    expect_within(c, a, bound, what + " (1 vs 2 threads)");
}

}  // namespace kumiko::test
