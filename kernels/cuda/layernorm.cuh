#pragma once
// LayerNorm over the last dimension C (kumiko::cpu::layernorm_*): out = (x - mean) *
// rstd * w + b, biased variance; mean[N], rstd[N] saved in fp32.
#include "kernels/cuda/common.cuh"

namespace kumiko::cuda {

template <typename T>
void layernorm_forward(T* out, float* mean, float* rstd, const T* x, const T* w, const T* b, int64_t N,
                       int64_t C, float eps, cudaStream_t stream);

size_t layernorm_backward_workspace_bytes(int64_t N, int64_t C);
// Accumulates: dx[N, C] += ..., dw[C] += ..., db[C] += ... (dw, db fp32; summed over
// rows in a fixed order through `workspace`).
template <typename T>
void layernorm_backward(T* dx, float* dw, float* db, const T* dout, const T* x, const T* w, const float* mean,
                        const float* rstd, int64_t N, int64_t C, void* workspace, cudaStream_t stream);

}  // namespace kumiko::cuda
