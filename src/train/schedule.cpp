#include "kumiko/train/schedule.h"

#include <algorithm>
#include <cmath>
#include <numbers>

namespace kumiko::train {

double learning_rate(const config::TrainConfig& t, int64_t step) {
  if (step < t.warmup_steps) return t.lr * static_cast<double>(step + 1) / static_cast<double>(t.warmup_steps);
  if (t.decay == "constant") return t.lr;
  const int64_t span = std::max<int64_t>(t.steps - t.warmup_steps, 1);
  const double progress = std::clamp(static_cast<double>(step - t.warmup_steps) / span, 0.0, 1.0);
  const double frac = t.decay == "linear" ? 1.0 - progress
                                          : 0.5 * (1.0 + std::cos(std::numbers::pi * progress));
  return t.min_lr + (t.lr - t.min_lr) * frac;
}

}  // namespace kumiko::train
