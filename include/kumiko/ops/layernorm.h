#pragma once
// LayerNorm over the last dimension C: out = (x - mean) * rstd * w + b,
// rstd = 1 / sqrt(var + eps) (biased variance). Saves mean[N] and rstd[N].
#include <cstdint>

namespace kumiko::cpu {

template <typename T>
void layernorm_forward(T* out, T* mean, T* rstd, const T* x, const T* w, const T* b, int64_t N,
                       int64_t C, T eps);

// Accumulates into dx[N, C], dw[C], db[C].
template <typename T>
void layernorm_backward(T* dx, T* dw, T* db, const T* dout, const T* x, const T* w, const T* mean,
                        const T* rstd, int64_t N, int64_t C);

}  // namespace kumiko::cpu
