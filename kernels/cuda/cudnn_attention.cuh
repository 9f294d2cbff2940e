#pragma once
// The vendor reference path for attention ([backend] attention = cudnn): cuDNN's
// fused scaled-dot-product attention through its graph API (cudnn_frontend). bf16
// only (cuDNN's fused attention has no fp32 kernels). Same tensors and semantics as
// kumiko::cuda::attention_forward / attention_backward (dqkv overwritten).
#include <memory>

#include "kernels/cuda/common.cuh"

namespace kumiko::cuda {

class CudnnAttention {
 public:
  CudnnAttention();  // creates the cuDNN handle
  ~CudnnAttention();
  CudnnAttention(const CudnnAttention&) = delete;
  CudnnAttention& operator=(const CudnnAttention&) = delete;

  // Workspace the graphs for these sizes need (builds and caches them).
  size_t workspace_bytes(int64_t B, int64_t T_, int64_t Hq, int64_t Hkv, int64_t D);
  void forward(bf16* out, float* lse, const bf16* qkv, int64_t B, int64_t T_, int64_t Hq, int64_t Hkv,
               int64_t D, void* workspace, cudaStream_t stream);
  void backward(bf16* dqkv, const bf16* dout, const bf16* qkv, const bf16* out, const float* lse, int64_t B,
                int64_t T_, int64_t Hq, int64_t Hkv, int64_t D, void* workspace, cudaStream_t stream);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace kumiko::cuda
