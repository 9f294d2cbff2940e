#pragma once
// kumiko's GEMM: C[M, N] = op(A) · op(B) (+ C) (+ bias) (then GELU), row-major,
// fp32 accumulation. The three layouts a linear layer y = x · W^T needs:
//   NT  forward   y[N, out]  = x[N, in] · W[out, in]^T      A [M, K], B stored [N, K]
//   NN  dgrad     dx[N, in]  = dy[N, out] · W[out, in]       A [M, K], B stored [K, N]
//   TN  wgrad     dW[out,in] = dy[N, out]^T · x[N, in]       A stored [K, M], B stored [K, N]
// Every operand is contiguous (leading dimension = its stored row length).
//
// Element types: <float, float> runs a CUDA-core fp32 kernel (exact fp32, for
// dtype = fp32 and the CPU-parity tests); <bf16, bf16> and <bf16, float> run the
// tensor-core kernel (bf16 in, fp32 accumulate; float out for weight gradients).
#include "kernels/cuda/common.cuh"

namespace kumiko::cuda {

enum class Layout { NN, NT, TN };
enum class Epilogue {
  none,       // C = acc (+ C)
  bias,       // C = acc + bias[n] (+ C)
  bias_gelu,  // pre = acc + bias[n]; C = gelu_tanh(pre); `pre` (nullable) keeps pre-activation
};

struct GemmArgs {
  Layout layout = Layout::NT;
  int64_t M = 0, N = 0, K = 0;
  bool accumulate = false;  // C += result (only with Epilogue::none or bias)
  Epilogue epilogue = Epilogue::none;
};

// bias: [N] of Tin (nullable unless the epilogue uses it); pre: [M, N] of Tout.
template <typename Tin, typename Tout>
void gemm(const GemmArgs& args, const Tin* A, const Tin* B, Tout* C, const Tin* bias, Tout* pre,
          cudaStream_t stream);

}  // namespace kumiko::cuda
