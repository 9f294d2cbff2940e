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

// A GEMM's GELU epilogue on bf16 storage, in one pass over acc: pre = bf16(acc), out =
// bf16(GELU(pre)), the GELU of the stored pre-activation (as PyTorch's autocast takes
// GELU of the linear's bf16 output), so that gelu_forward(pre) recomputes out bit for bit
// (train.recompute = selective).
void gelu_epilogue(bf16* pre, bf16* out, const float* acc, int64_t n);

}  // namespace kumiko::cpu
