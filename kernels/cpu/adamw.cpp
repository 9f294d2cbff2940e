// AdamW (PyTorch semantics), elementwise; scalar factors computed once in double.
#include "kumiko/ops/adamw.h"

#include <cmath>

#include "kernels/cpu/bf16_convert.h"
#include "kumiko/core/error.h"

namespace kumiko::cpu {

namespace {

// The update; with kWork also work[i] = bf16(param[i]) in the same pass.
template <typename T, bool kWork>
void adamw_loop(T* param, const T* grad, T* m, T* v, bf16* work, int64_t n, double lr, double beta1, double beta2,
                double eps, double weight_decay, double grad_scale, int64_t step) {
  KUMIKO_CHECK(step >= 1, "adamw_update: step counts from 1, got ", step);
  const double bc1 = 1.0 - std::pow(beta1, double(step));
  const double bc2 = 1.0 - std::pow(beta2, double(step));
  const T decay = T(1.0 - lr * weight_decay);
  const T b1 = T(beta1), b2 = T(beta2), one_b1 = T(1.0 - beta1), one_b2 = T(1.0 - beta2);
  const T step_size = T(lr / bc1);
  const T inv_sqrt_bc2 = T(1.0 / std::sqrt(bc2));
  const T eps_t = T(eps), gs = T(grad_scale);
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const T g = grad[i] * gs;
    const T mi = b1 * m[i] + one_b1 * g;
    const T vi = b2 * v[i] + one_b2 * g * g;
    m[i] = mi;
    v[i] = vi;
    const T p = param[i] * decay - step_size * mi / (std::sqrt(vi) * inv_sqrt_bc2 + eps_t);
    param[i] = p;
    if constexpr (kWork) work[i] = detail::narrow1(p);
  }
}

}  // namespace

template <typename T>
void adamw_update(T* param, const T* grad, T* m, T* v, int64_t n, double lr, double beta1,
                  double beta2, double eps, double weight_decay, double grad_scale, int64_t step) {
  adamw_loop<T, false>(param, grad, m, v, nullptr, n, lr, beta1, beta2, eps, weight_decay, grad_scale, step);
}

void adamw_update(float* param, const float* grad, float* m, float* v, bf16* work, int64_t n, double lr,
                  double beta1, double beta2, double eps, double weight_decay, double grad_scale, int64_t step) {
  adamw_loop<float, true>(param, grad, m, v, work, n, lr, beta1, beta2, eps, weight_decay, grad_scale, step);
}

template void adamw_update<float>(float*, const float*, float*, float*, int64_t, double, double,
                                  double, double, double, double, int64_t);
template void adamw_update<double>(double*, const double*, double*, double*, int64_t, double,
                                   double, double, double, double, double, int64_t);

}  // namespace kumiko::cpu
