#pragma once
// What a backend's adamw() takes (AdamW, PyTorch semantics: ops/adamw.h): ranges of
// the flat buffers and the step's hyper-parameters. Shared by every backend.
#include <cstdint>

namespace kumiko::backend {

// One contiguous range: master weights, their working copy (the same memory when
// the backend trains in the master precision), gradient and the two moments.
template <typename Act, typename Grad>
struct AdamWRange {
  Grad* param;
  Act* work;
  const Grad* grad;
  Grad *m, *v;
  int64_t n;
  bool decay;  // weight decay applies (matmul weights only)
};

struct AdamWStep {
  double lr = 0, beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0;
  double grad_scale = 1;  // gradient clipping factor
  int64_t step = 1;       // counts from 1
};

}  // namespace kumiko::backend
