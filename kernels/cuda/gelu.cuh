#pragma once
// GELU, tanh approximation (kumiko::cpu::gelu_*).
#include "kernels/cuda/common.cuh"

namespace kumiko::cuda {

template <typename T>
void gelu_forward(T* out, const T* x, int64_t n, cudaStream_t stream);
// dx += dout * gelu'(x)  (dx may alias dout: then dx = dout * gelu'(x) + dout is NOT
// what you want; pass overwrite = true to get dx = dout * gelu'(x), aliasing allowed).
template <typename T>
void gelu_backward(T* dx, const T* dout, const T* x, int64_t n, bool overwrite, cudaStream_t stream);

}  // namespace kumiko::cuda
