#pragma once
// GELU, tanh approximation (GPT-2): 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
// T is the storage type: float, double, or bf16 (computed in fp32, rounded once on store).
#include <cstdint>

#include "kumiko/core/bf16.h"

namespace kumiko::cpu {

template <typename T>
void gelu_forward(T* out, const T* x, int64_t n);

// dx += dout * gelu'(x); with overwrite, dx = dout * gelu'(x) (dx is not read, so it
// may hold anything, and may alias dout).
template <typename T>
void gelu_backward(T* dx, const T* dout, const T* x, int64_t n, bool overwrite);

}  // namespace kumiko::cpu
