// LayerNorm: rows are independent in the forward; the backward's parameter
// gradients are reduced over fixed row chunks (detail::make_chunks) and combined in
// chunk order, so results do not depend on the thread count. bf16 storage: fp32
// statistics and parameter gradients, each stored element rounded once.
#include "kumiko/ops/layernorm.h"

#include <cmath>

#include "kernels/cpu/common.h"

namespace kumiko::cpu {

template <typename S>
void layernorm_forward(S* out, math_t<S>* mean, math_t<S>* rstd, const S* x, const S* w, const S* b, int64_t N,
                       int64_t C, math_t<S> eps) {
  using T = math_t<S>;
  using detail::ld;
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const S* xr = x + n * C;  // [C]
    S* outr = out + n * C;    // [C]
    T sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int64_t c = 0; c < C; ++c) sum += ld(xr[c]);
    const T m = sum / T(C);
    T sq = 0;
#pragma omp simd reduction(+ : sq)
    for (int64_t c = 0; c < C; ++c) sq += (ld(xr[c]) - m) * (ld(xr[c]) - m);
    const T s = T(1) / std::sqrt(sq / T(C) + eps);
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) outr[c] = detail::st<S>(detail::fmadd((ld(xr[c]) - m) * s, ld(w[c]), ld(b[c])));
    mean[n] = m;
    rstd[n] = s;
  }
}

template <typename S>
void layernorm_backward(S* dx, math_t<S>* dw, math_t<S>* db, const S* dout, const S* x, const S* w,
                        const math_t<S>* mean, const math_t<S>* rstd, int64_t N, int64_t C) {
  using T = math_t<S>;
  using detail::ld;
  const detail::Chunks chunks = detail::make_chunks(N);
  // [chunks, 2, C], each chunk zeroes its own (no memset of the whole on one thread)
  T* const partial = detail::thread_scratch<T>(static_cast<size_t>(chunks.count * 2 * C));
#pragma omp parallel for schedule(static)
  for (int64_t k = 0; k < chunks.count; ++k) {
    T* pdw = partial + k * 2 * C;  // [C]
    T* pdb = pdw + C;              // [C]
    for (int64_t c = 0; c < 2 * C; ++c) pdw[c] = T(0);
    for (int64_t n = chunks.begin(k); n < chunks.end(k, N); ++n) {
      const S* xr = x + n * C;
      const S* dor = dout + n * C;
      S* dxr = dx + n * C;
      const T m = mean[n], s = rstd[n];
      T dnorm_mean = 0, dnorm_xhat_mean = 0;
#pragma omp simd reduction(+ : dnorm_mean, dnorm_xhat_mean)
      for (int64_t c = 0; c < C; ++c) {
        const T dnorm = ld(dor[c]) * ld(w[c]);
        dnorm_mean += dnorm;
        dnorm_xhat_mean += dnorm * (ld(xr[c]) - m) * s;
      }
      dnorm_mean /= T(C);
      dnorm_xhat_mean /= T(C);
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) {
        const T xhat = (ld(xr[c]) - m) * s, dy = ld(dor[c]);
        dxr[c] = detail::st<S>(ld(dxr[c]) + (dy * ld(w[c]) - dnorm_mean - xhat * dnorm_xhat_mean) * s);
        pdw[c] = detail::fmadd(dy, xhat, pdw[c]);
        pdb[c] += dy;
      }
    }
  }
  detail::add_chunk_sums(dw, partial, chunks.count, 2 * C, C);
  detail::add_chunk_sums(db, partial + C, chunks.count, 2 * C, C);
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
template void layernorm_forward<bf16>(bf16*, float*, float*, const bf16*, const bf16*, const bf16*, int64_t,
                                      int64_t, float);
template void layernorm_backward<bf16>(bf16*, float*, float*, const bf16*, const bf16*, const bf16*,
                                       const float*, const float*, int64_t, int64_t);

}  // namespace kumiko::cpu
