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
// 0.5 x (1 + tanh u) = x sigmoid(2u): the sigmoid form has no cancellation where
// tanh u -> -1 (x < -3), so the result keeps fp32's relative accuracy there too.
// exp's argument is capped at 80 (e^80 < FLT_MAX): s stays finite and 1 - s = e s.
struct GeluSigmoid {
  float s, one_minus_s;
};
__device__ __forceinline__ GeluSigmoid gelu_sigmoid(float x) {
  const float u = kGeluSqrt2OverPi * (x + kGeluCubic * x * x * x);
  const float e = expf(fminf(-2.0f * u, 80.0f));
  const float s = 1.0f / (1.0f + e);
  return {s, e * s};
}
__device__ __forceinline__ float gelu_tanh(float x) { return x * gelu_sigmoid(x).s; }
// gelu'(x) = s + 2 x s (1 - s) u'(x)  (0.5 (1 - tanh^2 u) = 2 s (1 - s)).
__device__ __forceinline__ float gelu_tanh_grad(float x) {
  const GeluSigmoid g = gelu_sigmoid(x);
  return g.s + 2.0f * x * g.s * g.one_minus_s * kGeluSqrt2OverPi * (1.0f + 3.0f * kGeluCubic * x * x);
}
}  // namespace kumiko::cuda
#endif
