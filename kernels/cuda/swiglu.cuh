#pragma once
// SwiGLU gate (kumiko::cpu::swiglu_*): out = silu(gate) * up.
#include "kernels/cuda/common.cuh"

namespace kumiko::cuda {

template <typename T>
void swiglu_forward(T* out, const T* gate, const T* up, int64_t n, cudaStream_t stream);
// overwrite = false: dgate += ..., dup += ... (the CPU op); true: both overwritten.
template <typename T>
void swiglu_backward(T* dgate, T* dup, const T* dout, const T* gate, const T* up, int64_t n, bool overwrite,
                     cudaStream_t stream);

}  // namespace kumiko::cuda
