// RMSNorm: rows are independent in the forward; dw is reduced over fixed row chunks
// combined in chunk order (thread-count independent). bf16 storage: fp32 statistics
// and dw, each stored element rounded once.
#include "kumiko/ops/rmsnorm.h"

#include <cmath>

#include "kernels/cpu/common.h"

namespace kumiko::cpu {

template <typename S>
void rmsnorm_forward(S* out, math_t<S>* rstd, const S* x, const S* w, int64_t N, int64_t C, math_t<S> eps) {
  using T = math_t<S>;
  using detail::ld;
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const S* xr = x + n * C;  // [C]
    S* outr = out + n * C;    // [C]
    T sq = 0;
#pragma omp simd reduction(+ : sq)
    for (int64_t c = 0; c < C; ++c) sq += ld(xr[c]) * ld(xr[c]);
    const T s = T(1) / std::sqrt(sq / T(C) + eps);
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) outr[c] = detail::st<S>(ld(xr[c]) * s * ld(w[c]));
    rstd[n] = s;
  }
}

template <typename S>
void rmsnorm_backward(S* dx, math_t<S>* dw, const S* dout, const S* x, const S* w, const math_t<S>* rstd,
                      int64_t N, int64_t C) {
  // out = x s w with s = (mean(x^2) + eps)^(-1/2):
  // dx = s (dout w) - x s^3 mean(dout w x).
  using T = math_t<S>;
  using detail::ld;
  const detail::Chunks chunks = detail::make_chunks(N);
  // [chunks, C], each chunk zeroes its own (no memset of the whole on one thread)
  T* const partial = detail::thread_scratch<T>(static_cast<size_t>(chunks.count * C));
#pragma omp parallel for schedule(static)
  for (int64_t k = 0; k < chunks.count; ++k) {
    T* pdw = partial + k * C;
    for (int64_t c = 0; c < C; ++c) pdw[c] = T(0);
    for (int64_t n = chunks.begin(k); n < chunks.end(k, N); ++n) {
      const S* xr = x + n * C;
      const S* dor = dout + n * C;
      S* dxr = dx + n * C;
      const T s = rstd[n];
      T dot = 0;
#pragma omp simd reduction(+ : dot)
      for (int64_t c = 0; c < C; ++c) dot += ld(dor[c]) * ld(w[c]) * ld(xr[c]);
      const T coef = dot / T(C) * s * s * s;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) {
        const T dy = ld(dor[c]), xc = ld(xr[c]);
        dxr[c] = detail::st<S>(ld(dxr[c]) + (dy * ld(w[c]) * s - xc * coef));
        pdw[c] = detail::fmadd(dy, xc * s, pdw[c]);
      }
    }
  }
  detail::add_chunk_sums(dw, partial, chunks.count, C, C);
}

template void rmsnorm_forward<float>(float*, float*, const float*, const float*, int64_t, int64_t,
                                     float);
template void rmsnorm_forward<double>(double*, double*, const double*, const double*, int64_t,
                                      int64_t, double);
template void rmsnorm_backward<float>(float*, float*, const float*, const float*, const float*,
                                      const float*, int64_t, int64_t);
template void rmsnorm_backward<double>(double*, double*, const double*, const double*,
                                       const double*, const double*, int64_t, int64_t);
template void rmsnorm_forward<bf16>(bf16*, float*, const bf16*, const bf16*, int64_t, int64_t, float);
template void rmsnorm_backward<bf16>(bf16*, float*, const bf16*, const bf16*, const bf16*, const float*, int64_t,
                                     int64_t);

}  // namespace kumiko::cpu
