#pragma once
// RMSNorm over the last dimension C (kumiko::cpu::rmsnorm_*): out = x * rstd * w,
// rstd = 1 / sqrt(mean(x^2) + eps) saved in fp32.
#include "kernels/cuda/common.cuh"

namespace kumiko::cuda {

template <typename T>
void rmsnorm_forward(T* out, float* rstd, const T* x, const T* w, int64_t N, int64_t C, float eps,
                     cudaStream_t stream);

size_t rmsnorm_backward_workspace_bytes(int64_t N, int64_t C);
// Accumulates: dx[N, C] += ..., dw[C] += ... (dw fp32, fixed summation order).
template <typename T>
void rmsnorm_backward(T* dx, float* dw, const T* dout, const T* x, const T* w, const float* rstd, int64_t N,
                      int64_t C, void* workspace, cudaStream_t stream);

}  // namespace kumiko::cuda
