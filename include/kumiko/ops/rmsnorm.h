#pragma once
// RMSNorm over the last dimension C: out = x * rstd * w, rstd = 1 / sqrt(mean(x^2) + eps).
#include <cstdint>

namespace kumiko::cpu {

template <typename T>
void rmsnorm_forward(T* out, T* rstd, const T* x, const T* w, int64_t N, int64_t C, T eps);

// Accumulates into dx[N, C] and dw[C].
template <typename T>
void rmsnorm_backward(T* dx, T* dw, const T* dout, const T* x, const T* w, const T* rstd, int64_t N,
                      int64_t C);

}  // namespace kumiko::cpu
