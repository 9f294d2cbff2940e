#pragma once
// LayerNorm over the last dimension C: out = (x - mean) * rstd * w + b,
// rstd = 1 / sqrt(var + eps) (biased variance). Saves mean[N] and rstd[N].
#include <cstdint>

#include "kumiko/core/bf16.h"

namespace kumiko::cpu {

// T is the storage type of x, out, w, b (float, double, bf16); statistics, parameter
// gradients and the arithmetic are math_t<T> (fp32 for bf16).
template <typename T>
void layernorm_forward(T* out, math_t<T>* mean, math_t<T>* rstd, const T* x, const T* w, const T* b, int64_t N,
                       int64_t C, math_t<T> eps);

// Accumulates into dx[N, C], dw[C], db[C].
template <typename T>
void layernorm_backward(T* dx, math_t<T>* dw, math_t<T>* db, const T* dout, const T* x, const T* w,
                        const math_t<T>* mean, const math_t<T>* rstd, int64_t N, int64_t C);

}  // namespace kumiko::cpu
