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

#ifdef __CUDACC__
namespace kumiko::cuda {
// The formula itself, shared with the GEMM epilogues (gemm.cu, gemm_mma.cu, cublaslt.cu).
inline constexpr float kGeluSqrt2OverPi = 0.7978845608028654f;
inline constexpr float kGeluCubic = 0.044715f;
__device__ __forceinline__ float gelu_tanh(float x) {
  const float u = kGeluSqrt2OverPi * (x + kGeluCubic * x * x * x);
  return 0.5f * x * (1.0f + tanhf(u));
}
}  // namespace kumiko::cuda
#endif
