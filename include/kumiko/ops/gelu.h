#pragma once
// GELU, tanh approximation (GPT-2): 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
#include <cstdint>

namespace kumiko::cpu {

template <typename T>
void gelu_forward(T* out, const T* x, int64_t n);

// dx += dout * gelu'(x).
template <typename T>
void gelu_backward(T* dx, const T* dout, const T* x, int64_t n);

}  // namespace kumiko::cpu
