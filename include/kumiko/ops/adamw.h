#pragma once
// AdamW with PyTorch semantics (torch.optim.AdamW), one flat parameter array:
//   g = grad * grad_scale
//   p -= lr * weight_decay * p
//   m = beta1 m + (1 - beta1) g;  v = beta2 v + (1 - beta2) g^2
//   p -= lr * (m / (1 - beta1^step)) / (sqrt(v / (1 - beta2^step)) + eps)
// step counts from 1.
#include <cstdint>

#include "kumiko/core/bf16.h"

namespace kumiko::cpu {

template <typename T>
void adamw_update(T* param, const T* grad, T* m, T* v, int64_t n, double lr, double beta1,
                  double beta2, double eps, double weight_decay, double grad_scale, int64_t step);

// fp32 master weights with a bf16 working copy (backend::CpuBf16): the same update,
// and work[i] = bf16(param[i]) (rounded to nearest even) written in the same pass.
void adamw_update(float* param, const float* grad, float* m, float* v, bf16* work, int64_t n, double lr,
                  double beta1, double beta2, double eps, double weight_decay, double grad_scale, int64_t step);

}  // namespace kumiko::cpu
