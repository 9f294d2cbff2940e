// SwiGLU gate, elementwise with a vectorised sigmoid (detail::sigmoid_approx); bf16
// storage computed in fp32, rounded once on store.
#include "kumiko/ops/swiglu.h"

#include "kernels/cpu/common.h"

namespace kumiko::cpu {

template <typename S>
void swiglu_forward(S* out, const S* gate, const S* up, int64_t n) {
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const auto g = detail::ld(gate[i]);
    out[i] = detail::st<S>(g * detail::sigmoid_approx(g) * detail::ld(up[i]));
  }
}

namespace {

template <bool kOverwrite, typename S>
void swiglu_backward_loop(S* dgate, S* dup, const S* dout, const S* gate, const S* up, int64_t n) {
  using T = math_t<S>;
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const T g = detail::ld(gate[i]), u = detail::ld(up[i]), dy = detail::ld(dout[i]);
    const T sg = detail::sigmoid_approx(g);
    const T silu = g * sg;
    // silu'(g) = sg (1 + g (1 - sg))
    const T dg = dy * u * sg * (T(1) + g * (T(1) - sg)), du = dy * silu;
    if constexpr (kOverwrite) {
      dgate[i] = detail::st<S>(dg);
      dup[i] = detail::st<S>(du);
    } else {
      dgate[i] = detail::st<S>(detail::ld(dgate[i]) + dg);
      dup[i] = detail::st<S>(detail::ld(dup[i]) + du);
    }
  }
}

}  // namespace

template <typename S>
void swiglu_backward(S* dgate, S* dup, const S* dout, const S* gate, const S* up, int64_t n, bool overwrite) {
  if (overwrite)
    swiglu_backward_loop<true>(dgate, dup, dout, gate, up, n);
  else
    swiglu_backward_loop<false>(dgate, dup, dout, gate, up, n);
}

template void swiglu_forward<float>(float*, const float*, const float*, int64_t);
template void swiglu_forward<double>(double*, const double*, const double*, int64_t);
template void swiglu_backward<float>(float*, float*, const float*, const float*, const float*,
                                     int64_t, bool);
template void swiglu_backward<double>(double*, double*, const double*, const double*,
                                      const double*, int64_t, bool);
template void swiglu_forward<bf16>(bf16*, const bf16*, const bf16*, int64_t);
template void swiglu_backward<bf16>(bf16*, bf16*, const bf16*, const bf16*, const bf16*, int64_t, bool);

}  // namespace kumiko::cpu
