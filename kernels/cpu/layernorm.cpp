// LayerNorm: rows are independent in the forward; the backward's parameter
// gradients are reduced over fixed row chunks (detail::make_chunks) and combined in
// chunk order, so results do not depend on the thread count.
#include "kumiko/ops/layernorm.h"

#include <cmath>
#include <vector>

#include "kernels/cpu/common.h"

namespace kumiko::cpu {

template <typename T>
void layernorm_forward(T* out, T* mean, T* rstd, const T* x, const T* w, const T* b, int64_t N,
                       int64_t C, T eps) {
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const T* xr = x + n * C;  // [C]
    T* outr = out + n * C;    // [C]
    T sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int64_t c = 0; c < C; ++c) sum += xr[c];
    const T m = sum / T(C);
    T sq = 0;
#pragma omp simd reduction(+ : sq)
    for (int64_t c = 0; c < C; ++c) sq += (xr[c] - m) * (xr[c] - m);
    const T s = T(1) / std::sqrt(sq / T(C) + eps);
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) outr[c] = detail::fmadd((xr[c] - m) * s, w[c], b[c]);
    mean[n] = m;
    rstd[n] = s;
  }
}

template <typename T>
void layernorm_backward(T* dx, T* dw, T* db, const T* dout, const T* x, const T* w, const T* mean,
                        const T* rstd, int64_t N, int64_t C) {
  const detail::Chunks chunks = detail::make_chunks(N);
  std::vector<T> partial(static_cast<size_t>(chunks.count * 2 * C));  // [chunks, 2, C]
#pragma omp parallel for schedule(static)
  for (int64_t k = 0; k < chunks.count; ++k) {
    T* pdw = partial.data() + k * 2 * C;  // [C]
    T* pdb = pdw + C;                     // [C]
    for (int64_t c = 0; c < 2 * C; ++c) pdw[c] = T(0);
    for (int64_t n = chunks.begin(k); n < chunks.end(k, N); ++n) {
      const T* xr = x + n * C;
      const T* dor = dout + n * C;
      T* dxr = dx + n * C;
      const T m = mean[n], s = rstd[n];
      T dnorm_mean = 0, dnorm_xhat_mean = 0;
#pragma omp simd reduction(+ : dnorm_mean, dnorm_xhat_mean)
      for (int64_t c = 0; c < C; ++c) {
        const T dnorm = dor[c] * w[c];
        dnorm_mean += dnorm;
        dnorm_xhat_mean += dnorm * (xr[c] - m) * s;
      }
      dnorm_mean /= T(C);
      dnorm_xhat_mean /= T(C);
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) {
        const T xhat = (xr[c] - m) * s;
        dxr[c] += (dor[c] * w[c] - dnorm_mean - xhat * dnorm_xhat_mean) * s;
        pdw[c] = detail::fmadd(dor[c], xhat, pdw[c]);
        pdb[c] += dor[c];
      }
    }
  }
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < C; ++c) {
    T sw = 0, sb = 0;
    for (int64_t k = 0; k < chunks.count; ++k) {
      sw += partial[k * 2 * C + c];
      sb += partial[k * 2 * C + C + c];
    }
    dw[c] += sw;
    db[c] += sb;
  }
}

template void layernorm_forward<float>(float*, float*, float*, const float*, const float*,
                                       const float*, int64_t, int64_t, float);
template void layernorm_forward<double>(double*, double*, double*, const double*, const double*,
                                        const double*, int64_t, int64_t, double);
template void layernorm_backward<float>(float*, float*, float*, const float*, const float*,
                                        const float*, const float*, const float*, int64_t, int64_t);
template void layernorm_backward<double>(double*, double*, double*, const double*, const double*,
                                         const double*, const double*, const double*, int64_t,
                                         int64_t);

}  // namespace kumiko::cpu
