#pragma once
// The parts of a linear layer that are not a GEMM: the bias gradient.
#include "kernels/cuda/common.cuh"

namespace kumiko::cuda {

// dbias[C] += sum over rows n of dy[n, c] (dy [N, C]), summed in a fixed order
// (deterministic). `workspace` holds bias_backward_workspace_bytes(N, C) bytes.
size_t bias_backward_workspace_bytes(int64_t N, int64_t C);
template <typename T>
void bias_backward(float* dbias, const T* dy, int64_t N, int64_t C, void* workspace, cudaStream_t stream);

}  // namespace kumiko::cuda
