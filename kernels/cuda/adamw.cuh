#pragma once
// Multi-tensor fused AdamW (PyTorch semantics, kumiko::cpu::adamw_update) on fp32
// master weights and fp32 moments: one launch updates every tensor of a list, and
// writes the bf16 working copy of each weight when it has one.
#include "kernels/cuda/common.cuh"

namespace kumiko::cuda {

struct AdamWTensor {
  float* param = nullptr;        // fp32 master weights
  bf16* param_bf16 = nullptr;    // nullable: bf16 working copy rewritten after the update
  const float* grad = nullptr;   // fp32 gradient
  float* m = nullptr;
  float* v = nullptr;
  int64_t n = 0;
  float weight_decay = 0.0f;     // 0 for tensors without decay
};

struct AdamWStep {
  float lr = 0, beta1 = 0.9f, beta2 = 0.95f, eps = 1e-8f;
  float grad_scale = 1.0f;            // gradient clipping factor
  float bias_correction1 = 1.0f;      // 1 - beta1^step (computed in double by the caller)
  float bias_correction2 = 1.0f;      // 1 - beta2^step
};

// `tensors` is a DEVICE array of `count` descriptors (upload once; pointers stay
// valid in the arena). Every element of every tensor is updated exactly once.
void adamw_multi_tensor(const AdamWTensor* tensors, int count, int64_t max_n, const AdamWStep& step,
                        cudaStream_t stream);

}  // namespace kumiko::cuda
