// Fully connected layer on top of matmul (CBLAS). See docs/kernels.md for the
// measured choice of transposes.
#include "kumiko/ops/linear.h"

#include <omp.h>

#include "kernels/cpu/common.h"
#include "kumiko/ops/matmul.h"

namespace kumiko::cpu {

template <typename T>
void linear_forward(T* y, const T* x, const T* w, const T* b, int64_t N, int64_t in, int64_t out) {
  T beta = T(0);
  if (b != nullptr) {
    // y starts as the broadcast bias, and the GEMM accumulates onto it.
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; ++n) {
      T* yr = y + n * out;  // [out]
#pragma omp simd
      for (int64_t o = 0; o < out; ++o) yr[o] = b[o];
    }
    beta = T(1);
  }
  // y[N, out] = x[N, in] · W[out, in]^T
  matmul<T>(false, true, N, out, in, T(1), x, in, w, in, beta, y, out);
}

template <typename T>
void linear_backward(T* dx, T* dw, T* db, const T* dy, const T* x, const T* w, int64_t N,
                     int64_t in, int64_t out, bool accumulate_dx, bool accumulate_dw) {
  // The bias gradient first, while dy, just written by the op before, is still in cache.
  if (db != nullptr) bias_backward(db, dy, N, out);
  // dx[N, in] (+)= dy[N, out] · W[out, in]
  if (dx != nullptr) matmul<T>(false, false, N, in, out, T(1), dy, out, w, in, T(accumulate_dx), dx, in);
  // dw[out, in] (+)= dy^T[out, N] · x[N, in]
  matmul<T>(true, false, out, in, N, T(1), dy, out, x, in, T(accumulate_dw), dw, in);
}

template <typename S>
void bias_backward(math_t<S>* db, const S* dy, int64_t N, int64_t C) {
  // Each thread owns a column range of db and sums rows in order n = 0..N-1.
#pragma omp parallel
  {
    int64_t c0 = 0, c1 = 0;
    detail::column_range(C, omp_get_thread_num(), omp_get_num_threads(), c0, c1);
    for (int64_t n = 0; n < N; ++n) {
      const S* dyr = dy + n * C;
#pragma omp simd
      for (int64_t c = c0; c < c1; ++c) db[c] += detail::ld(dyr[c]);
    }
  }
}

template void linear_forward<float>(float*, const float*, const float*, const float*, int64_t,
                                    int64_t, int64_t);
template void linear_forward<double>(double*, const double*, const double*, const double*, int64_t,
                                     int64_t, int64_t);
template void linear_backward<float>(float*, float*, float*, const float*, const float*,
                                     const float*, int64_t, int64_t, int64_t, bool, bool);
template void linear_backward<double>(double*, double*, double*, const double*, const double*,
                                      const double*, int64_t, int64_t, int64_t, bool, bool);
template void bias_backward<float>(float*, const float*, int64_t, int64_t);
template void bias_backward<double>(double*, const double*, int64_t, int64_t);
template void bias_backward<bf16>(float*, const bf16*, int64_t, int64_t);

}  // namespace kumiko::cpu
