// GELU (tanh approximation), elementwise with a vectorised tanh (detail::tanh_approx).
#include "kumiko/ops/gelu.h"

#include "kernels/cpu/common.h"

namespace kumiko::cpu {

namespace {
constexpr double kSqrt2OverPi = 0.7978845608028654;
constexpr double kCubic = 0.044715;
}  // namespace

template <typename T>
void gelu_forward(T* out, const T* x, int64_t n) {
  const T a = T(kSqrt2OverPi), c3 = T(kCubic);
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const T xi = x[i];
    const T u = a * (xi + c3 * xi * xi * xi);
    out[i] = T(0.5) * xi * (T(1) + detail::tanh_approx(u));
  }
}

template <typename T>
void gelu_backward(T* dx, const T* dout, const T* x, int64_t n) {
  const T a = T(kSqrt2OverPi), c3 = T(kCubic);
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const T xi = x[i];
    const T u = a * (xi + c3 * xi * xi * xi);
    const T th = detail::tanh_approx(u);
    const T sech2 = T(1) - th * th;
    const T grad = T(0.5) * (T(1) + th) + T(0.5) * xi * sech2 * a * (T(1) + T(3) * c3 * xi * xi);
    dx[i] += dout[i] * grad;
  }
}

template void gelu_forward<float>(float*, const float*, int64_t);
template void gelu_forward<double>(double*, const double*, int64_t);
template void gelu_backward<float>(float*, const float*, const float*, int64_t);
template void gelu_backward<double>(double*, const double*, const double*, int64_t);

}  // namespace kumiko::cpu
