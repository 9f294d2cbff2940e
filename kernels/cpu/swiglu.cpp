// SwiGLU gate, elementwise with a vectorised sigmoid (detail::sigmoid_approx).
#include "kumiko/ops/swiglu.h"

#include "kernels/cpu/common.h"

namespace kumiko::cpu {

template <typename T>
void swiglu_forward(T* out, const T* gate, const T* up, int64_t n) {
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const T g = gate[i];
    out[i] = g * detail::sigmoid_approx(g) * up[i];
  }
}

template <typename T>
void swiglu_backward(T* dgate, T* dup, const T* dout, const T* gate, const T* up, int64_t n) {
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const T g = gate[i];
    const T sg = detail::sigmoid_approx(g);
    const T silu = g * sg;
    // silu'(g) = sg (1 + g (1 - sg))
    dgate[i] += dout[i] * up[i] * sg * (T(1) + g * (T(1) - sg));
    dup[i] += dout[i] * silu;
  }
}

template void swiglu_forward<float>(float*, const float*, const float*, int64_t);
template void swiglu_forward<double>(double*, const double*, const double*, int64_t);
template void swiglu_backward<float>(float*, float*, const float*, const float*, const float*,
                                     int64_t);
template void swiglu_backward<double>(double*, double*, const double*, const double*,
                                      const double*, int64_t);

}  // namespace kumiko::cpu
