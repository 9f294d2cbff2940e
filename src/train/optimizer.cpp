#include "kumiko/train/optimizer.h"

#include <cmath>

#include "kumiko/ops/adamw.h"
#include "kumiko/ops/elementwise.h"

namespace kumiko::train {

template <typename T>
AdamW<T>::AdamW(const model::ParameterStore<T>& params, AdamWSettings settings)
    : settings_(settings), m_({params.total_numel()}), v_({params.total_numel()}) {
  m_.zero();
  v_.zero();
}

template <typename T>
void AdamW<T>::step(model::ParameterStore<T>& params, double lr, double grad_scale) {
  ++step_;
  const T* base = params.flat_values().data();
  for (size_t i = 0; i < params.size(); ++i) {
    const int idx = static_cast<int>(i);
    const int64_t offset = params.value(idx) - base;
    const double wd = params.spec(idx).decay ? settings_.weight_decay : 0.0;
    cpu::adamw_update(params.value(idx), params.grad(idx), m_.data() + offset, v_.data() + offset,
                      params.numel(idx), lr, settings_.beta1, settings_.beta2, settings_.eps, wd,
                      grad_scale, step_);
  }
}

template <typename T>
double grad_norm(const model::ParameterStore<T>& params) {
  return std::sqrt(cpu::sum_squares(params.flat_grads().data(), params.flat_grads().numel()));
}

template class AdamW<float>;
template class AdamW<double>;
template double grad_norm(const model::ParameterStore<float>&);
template double grad_norm(const model::ParameterStore<double>&);

}  // namespace kumiko::train
