#pragma once
// Learning-rate schedule: linear warmup from lr/warmup_steps to lr over
// warmup_steps, then cosine or linear decay to min_lr at `steps` (or constant).
#include <cstdint>

#include "kumiko/config/config.h"

namespace kumiko::train {

double learning_rate(const config::TrainConfig& t, int64_t step);  // step counts from 0

}  // namespace kumiko::train
