#pragma once
// Global gradient norm: the sum of squares of a flat fp32 buffer, reduced in a fixed
// order (two passes, no atomics) into one double on the device.
#include "kernels/cuda/common.cuh"

namespace kumiko::cuda {

size_t sum_squares_workspace_bytes(int64_t n);
// *out = sum x[i]^2 (double, device pointer).
void sum_squares(double* out, const float* x, int64_t n, void* workspace, cudaStream_t stream);

}  // namespace kumiko::cuda
