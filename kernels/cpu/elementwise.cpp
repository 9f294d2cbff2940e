// Elementwise helpers; sum_squares reduces over fixed-size chunks in double.
#include "kumiko/ops/elementwise.h"

#include <algorithm>
#include <cstddef>
#include <vector>

#include "kernels/cpu/common.h"

namespace kumiko::cpu {

namespace {
constexpr int64_t kSumChunk = int64_t{1} << 14;  // elements per partial sum
}

template <typename T>
void add(T* out, const T* a, const T* b, int64_t n) {
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
}

template <typename S>
void add_inplace(S* out, const S* a, int64_t n) {
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) out[i] = detail::st<S>(detail::ld(out[i]) + detail::ld(a[i]));
}

template <typename T>
void scale_inplace(T* x, T s, int64_t n) {
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) x[i] *= s;
}

template <typename T>
double sum_squares(const T* x, int64_t n) {
  const int64_t chunks = (n + kSumChunk - 1) / kSumChunk;
  std::vector<double> partial(static_cast<size_t>(chunks));
#pragma omp parallel for schedule(static)
  for (int64_t k = 0; k < chunks; ++k) {
    const int64_t end = std::min(n, (k + 1) * kSumChunk);
    double s = 0;
#pragma omp simd reduction(+ : s)
    for (int64_t i = k * kSumChunk; i < end; ++i) s += double(x[i]) * double(x[i]);
    partial[k] = s;
  }
  double total = 0;
  for (double p : partial) total += p;
  return total;
}

#define KUMIKO_INSTANTIATE(T)                                 \
  template void add<T>(T*, const T*, const T*, int64_t);      \
  template void add_inplace<T>(T*, const T*, int64_t);        \
  template void scale_inplace<T>(T*, T, int64_t);             \
  template double sum_squares<T>(const T*, int64_t);
KUMIKO_INSTANTIATE(float)
KUMIKO_INSTANTIATE(double)
template void add_inplace<bf16>(bf16*, const bf16*, int64_t);  // the sum in fp32, rounded once
#undef KUMIKO_INSTANTIATE

}  // namespace kumiko::cpu
