#pragma once
// SwiGLU gate: out = silu(gate) * up, silu(g) = g * sigmoid(g). Arrays of n elements of
// float, double or bf16 (computed in fp32).
#include <cstdint>

#include "kumiko/core/bf16.h"

namespace kumiko::cpu {

template <typename T>
void swiglu_forward(T* out, const T* gate, const T* up, int64_t n);

// dgate += dout * up * silu'(gate);  dup += dout * silu(gate). With overwrite, = instead
// of += (dgate and dup are not read; either may alias dout).
template <typename T>
void swiglu_backward(T* dgate, T* dup, const T* dout, const T* gate, const T* up, int64_t n, bool overwrite);

}  // namespace kumiko::cpu
