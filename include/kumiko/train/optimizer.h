#pragma once
// AdamW (Loshchilov & Hutter), PyTorch semantics: decoupled weight decay applied
// only to parameters whose spec says so (matmul weights), bias-corrected moments.
#include <cstdint>

#include "kumiko/core/tensor.h"
#include "kumiko/model/parameters.h"

namespace kumiko::train {

struct AdamWSettings {
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.1;
};

template <typename T>
class AdamW {
 public:
  AdamW(const model::ParameterStore<T>& params, AdamWSettings settings);
  // One update with learning rate lr; gradients are multiplied by grad_scale
  // (the clipping coefficient) on the fly.
  void step(model::ParameterStore<T>& params, double lr, double grad_scale);
  int64_t steps_taken() const { return step_; }
  Tensor<T>& m() { return m_; }
  Tensor<T>& v() { return v_; }
  const Tensor<T>& m() const { return m_; }
  const Tensor<T>& v() const { return v_; }
  void set_steps_taken(int64_t s) { step_ = s; }

 private:
  AdamWSettings settings_;
  Tensor<T> m_, v_;  // same flat layout as the parameters
  int64_t step_ = 0;
};

// Global L2 norm of all gradients (deterministic order, accumulated in double).
template <typename T>
double grad_norm(const model::ParameterStore<T>& params);

}  // namespace kumiko::train
