#pragma once
// RMSNorm over the last dimension C: out = x * rstd * w, rstd = 1 / sqrt(mean(x^2) + eps).
#include <cstdint>

#include "kumiko/core/bf16.h"

namespace kumiko::cpu {

// T is the storage type of x, out, w (float, double, bf16); rstd, dw and the arithmetic
// are math_t<T> (fp32 for bf16).
template <typename T>
void rmsnorm_forward(T* out, math_t<T>* rstd, const T* x, const T* w, int64_t N, int64_t C, math_t<T> eps);

// Accumulates into dx[N, C] and dw[C].
template <typename T>
void rmsnorm_backward(T* dx, math_t<T>* dw, const T* dout, const T* x, const T* w, const math_t<T>* rstd,
                      int64_t N, int64_t C);

}  // namespace kumiko::cpu
