#pragma once
// AdamW with PyTorch semantics (torch.optim.AdamW), one flat parameter array:
//   g = grad * grad_scale
//   p -= lr * weight_decay * p
//   m = beta1 m + (1 - beta1) g;  v = beta2 v + (1 - beta2) g^2
//   p -= lr * (m / (1 - beta1^step)) / (sqrt(v / (1 - beta2^step)) + eps)
// step counts from 1.
#include <cstddef>
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

// Many arrays in one call (a model's parameters, each with its own weight decay; the
// calls above are one slice of it): one parallel region whose threads take pieces of
// 2^16 elements as they free up, so a small tensor costs no fork / join of its own
// and threads that run at different speeds (a VM's vCPUs) still finish together. The
// update is elementwise: the same bits for any slicing and thread count. `work`
// (nullable) only with T = float. With `after` set, the slice's pieces start at
// multiples of `align` elements (align > 0) and after(ctx, begin, end) runs on the
// thread that updated elements [begin, end), right after it, while that piece of the
// working copy is still in cache (CpuBf16 packs its weights for oneDNN there).
// Elements a thread updates at a time (rounded up to whole `align` units with a hook).
inline constexpr int64_t kAdamWPiece = int64_t{1} << 16;

template <typename T>
struct AdamWSlice {
  T* param;
  const T* grad;
  T *m, *v;
  bf16* work;
  int64_t n;
  double weight_decay;
  int64_t align = 0;
  void (*after)(void* ctx, int64_t begin, int64_t end) = nullptr;
  void* ctx = nullptr;
};
template <typename T>
void adamw_update(const AdamWSlice<T>* slices, size_t count, double lr, double beta1, double beta2, double eps,
                  double grad_scale, int64_t step);

}  // namespace kumiko::cpu
