// Embedding lookup and learned positions. The backward passes give each thread a
// column range and sum rows in index order: no atomics, identical for any thread count.
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

template <typename T>
void embedding_backward(T* dtable, const T* dout, const int32_t* ids, int64_t N, int64_t C) {
#pragma omp parallel
  {
    int64_t c0 = 0, c1 = 0;
    detail::column_range(C, omp_get_thread_num(), omp_get_num_threads(), c0, c1);
    for (int64_t n = 0; n < N; ++n) {
      T* dst = dtable + int64_t{ids[n]} * C;
      const T* src = dout + n * C;
#pragma omp simd
      for (int64_t c = c0; c < c1; ++c) dst[c] += src[c];
    }
  }
}

template <typename T>
void add_positions_forward(T* out, const T* pos, int64_t B, int64_t T_, int64_t C) {
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t t = 0; t < T_; ++t) {
      T* o = out + (b * T_ + t) * C;
      const T* p = pos + t * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) o[c] += p[c];
    }
  }
}

template <typename T>
void add_positions_backward(T* dpos, const T* dout, int64_t B, int64_t T_, int64_t C) {
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < T_; ++t) {
    T* dp = dpos + t * C;
    for (int64_t b = 0; b < B; ++b) {
      const T* d = dout + (b * T_ + t) * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) dp[c] += d[c];
    }
  }
}

#define KUMIKO_INSTANTIATE(T)                                                               \
  template void embedding_forward<T>(T*, const int32_t*, const T*, int64_t, int64_t);       \
  template void embedding_backward<T>(T*, const T*, const int32_t*, int64_t, int64_t);      \
  template void add_positions_forward<T>(T*, const T*, int64_t, int64_t, int64_t);          \
  template void add_positions_backward<T>(T*, const T*, int64_t, int64_t, int64_t);
KUMIKO_INSTANTIATE(float)
KUMIKO_INSTANTIATE(double)
#undef KUMIKO_INSTANTIATE

}  // namespace kumiko::cpu
