// Embedding lookup and learned positions. The backward passes give each thread a
// column range and sum rows in index order: no atomics, identical for any thread count.
// bf16 storage: added in fp32 and rounded once; gradients accumulate in fp32.
#include "kumiko/ops/embedding.h"

#include <omp.h>

#include <cstring>

#include "kernels/cpu/common.h"

namespace kumiko::cpu {

template <typename T>
void embedding_forward(T* out, const int32_t* ids, const T* table, int64_t N, int64_t C) {
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    std::memcpy(out + n * C, table + int64_t{ids[n]} * C, sizeof(T) * size_t(C));
  }
}

template <typename S>
void embedding_backward(math_t<S>* dtable, const S* dout, const int32_t* ids, int64_t N, int64_t C) {
#pragma omp parallel
  {
    int64_t c0 = 0, c1 = 0;
    detail::column_range(C, omp_get_thread_num(), omp_get_num_threads(), c0, c1);
    for (int64_t n = 0; n < N; ++n) {
      math_t<S>* dst = dtable + int64_t{ids[n]} * C;
      const S* src = dout + n * C;
#pragma omp simd
      for (int64_t c = c0; c < c1; ++c) dst[c] += detail::ld(src[c]);
    }
  }
}

template <typename S>
void add_positions_range(S* x, const S* pos, int64_t first, int64_t rows, int64_t T_, int64_t C) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < rows; ++i) {
    S* o = x + i * C;
    const S* p = pos + (first + i) % T_ * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) o[c] = detail::st<S>(detail::ld(o[c]) + detail::ld(p[c]));
  }
}

template <typename S>
void add_positions_forward(S* out, const S* pos, int64_t B, int64_t T_, int64_t C) {
  add_positions_range(out, pos, 0, B * T_, T_, C);
}

template <typename S>
void add_positions_backward(math_t<S>* dpos, const S* dout, int64_t B, int64_t T_, int64_t C) {
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < T_; ++t) {
    math_t<S>* dp = dpos + t * C;
    for (int64_t b = 0; b < B; ++b) {
      const S* d = dout + (b * T_ + t) * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) dp[c] += detail::ld(d[c]);
    }
  }
}

#define KUMIKO_INSTANTIATE(T)                                                                     \
  template void embedding_forward<T>(T*, const int32_t*, const T*, int64_t, int64_t);             \
  template void embedding_backward<T>(math_t<T>*, const T*, const int32_t*, int64_t, int64_t);    \
  template void add_positions_range<T>(T*, const T*, int64_t, int64_t, int64_t, int64_t);         \
  template void add_positions_forward<T>(T*, const T*, int64_t, int64_t, int64_t);                \
  template void add_positions_backward<T>(math_t<T>*, const T*, int64_t, int64_t, int64_t);
KUMIKO_INSTANTIATE(float)
KUMIKO_INSTANTIATE(double)
KUMIKO_INSTANTIATE(bf16)
#undef KUMIKO_INSTANTIATE

}  // namespace kumiko::cpu
