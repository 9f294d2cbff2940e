#pragma once
// AdamW's settings (Loshchilov & Hutter, PyTorch semantics: decoupled weight decay
// applied only to parameters whose spec says so, bias-corrected moments). The one
// AdamW is the backend's (backend/adamw.h), driven by parallel::BasicDataParallel.

namespace kumiko::train {

struct AdamWSettings {
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.1;
};

}  // namespace kumiko::train
