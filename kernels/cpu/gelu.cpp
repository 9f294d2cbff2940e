// GELU (tanh approximation), elementwise in its sigmoid form, 0.5 x (1 + tanh u) =
// x sigmoid(2u), with a vectorised exp (detail::exp_approx): no cancellation in 1 + tanh u
// where tanh u -> -1, so the negative tail keeps the type's relative accuracy (and the
// CUDA kernels, kernels/cuda/gelu.cuh, compute the same form). bf16 storage is computed
// in fp32 and rounded once on store (common.h's ld / st).
#include "kumiko/ops/gelu.h"

#include "kernels/cpu/common.h"

namespace kumiko::cpu {

namespace {
constexpr double kSqrt2OverPi = 0.7978845608028654;
constexpr double kCubic = 0.044715;

template <typename T>
[[gnu::always_inline]] inline T gelu(T x) {
  const T a = T(kSqrt2OverPi), c3 = T(kCubic);
  const T u = a * (x + c3 * x * x * x);
  return x / (T(1) + detail::exp_approx(T(-2) * u));
}

}  // namespace

template <typename S>
void gelu_forward(S* out, const S* x, int64_t n) {
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) out[i] = detail::st<S>(gelu(detail::ld(x[i])));
}

namespace {

template <bool kOverwrite, typename S>
void gelu_backward_loop(S* dx, const S* dout, const S* x, int64_t n) {
  using T = math_t<S>;
  const T a = T(kSqrt2OverPi), c3 = T(kCubic);
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const T xi = detail::ld(x[i]);
    const T u = a * (xi + c3 * xi * xi * xi);
    // gelu'(x) = s + 2 x s (1 - s) u'(x), s = sigmoid(2u), 1 - s = e s with e = exp(-2u)
    // (exp_approx saturates at a finite value, so e s never is inf * 0).
    const T e = detail::exp_approx(T(-2) * u);
    const T s = T(1) / (T(1) + e);
    const T grad = s + T(2) * xi * s * (e * s) * a * (T(1) + T(3) * c3 * xi * xi);
    const T g = detail::ld(dout[i]) * grad;
    if constexpr (kOverwrite)
      dx[i] = detail::st<S>(g);
    else
      dx[i] = detail::st<S>(detail::ld(dx[i]) + g);
  }
}

}  // namespace

template <typename S>
void gelu_backward(S* dx, const S* dout, const S* x, int64_t n, bool overwrite) {
  if (overwrite)
    gelu_backward_loop<true>(dx, dout, x, n);
  else
    gelu_backward_loop<false>(dx, dout, x, n);
}

template void gelu_forward<float>(float*, const float*, int64_t);
template void gelu_forward<double>(double*, const double*, int64_t);
template void gelu_backward<float>(float*, const float*, const float*, int64_t, bool);
template void gelu_backward<double>(double*, const double*, const double*, int64_t, bool);
template void gelu_forward<bf16>(bf16*, const bf16*, int64_t);
template void gelu_backward<bf16>(bf16*, const bf16*, const bf16*, int64_t, bool);

}  // namespace kumiko::cpu
