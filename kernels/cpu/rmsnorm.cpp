// RMSNorm: rows are independent in the forward; dw is reduced over fixed row chunks
// combined in chunk order (thread-count independent).
#include "kumiko/ops/rmsnorm.h"

#include <cmath>
#include <vector>

#include "kernels/cpu/common.h"

namespace kumiko::cpu {

template <typename T>
void rmsnorm_forward(T* out, T* rstd, const T* x, const T* w, int64_t N, int64_t C, T eps) {
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const T* xr = x + n * C;  // [C]
    T* outr = out + n * C;    // [C]
    T sq = 0;
#pragma omp simd reduction(+ : sq)
    for (int64_t c = 0; c < C; ++c) sq += xr[c] * xr[c];
    const T s = T(1) / std::sqrt(sq / T(C) + eps);
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) outr[c] = xr[c] * s * w[c];
    rstd[n] = s;
  }
}

template <typename T>
void rmsnorm_backward(T* dx, T* dw, const T* dout, const T* x, const T* w, const T* rstd, int64_t N,
                      int64_t C) {
  // out = x s w with s = (mean(x^2) + eps)^(-1/2):
  // dx = s (dout w) - x s^3 mean(dout w x).
  const detail::Chunks chunks = detail::make_chunks(N);
  std::vector<T> partial(static_cast<size_t>(chunks.count * C));  // [chunks, C]
#pragma omp parallel for schedule(static)
  for (int64_t k = 0; k < chunks.count; ++k) {
    T* pdw = partial.data() + k * C;
    for (int64_t c = 0; c < C; ++c) pdw[c] = T(0);
    for (int64_t n = chunks.begin(k); n < chunks.end(k, N); ++n) {
      const T* xr = x + n * C;
      const T* dor = dout + n * C;
      T* dxr = dx + n * C;
      const T s = rstd[n];
      T dot = 0;
#pragma omp simd reduction(+ : dot)
      for (int64_t c = 0; c < C; ++c) dot += dor[c] * w[c] * xr[c];
      const T coef = dot / T(C) * s * s * s;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) {
        dxr[c] += dor[c] * w[c] * s - xr[c] * coef;
        pdw[c] = detail::fmadd(dor[c], xr[c] * s, pdw[c]);
      }
    }
  }
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < C; ++c) {
    T sw = 0;
    for (int64_t k = 0; k < chunks.count; ++k) sw += partial[k * C + c];
    dw[c] += sw;
  }
}

template void rmsnorm_forward<float>(float*, float*, const float*, const float*, int64_t, int64_t,
                                     float);
template void rmsnorm_forward<double>(double*, double*, const double*, const double*, int64_t,
                                      int64_t, double);
template void rmsnorm_backward<float>(float*, float*, const float*, const float*, const float*,
                                      const float*, int64_t, int64_t);
template void rmsnorm_backward<double>(double*, double*, const double*, const double*,
                                       const double*, const double*, int64_t, int64_t);

}  // namespace kumiko::cpu
