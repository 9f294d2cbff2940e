// AdamW (PyTorch semantics), elementwise; scalar factors computed once in double.
#include "kumiko/ops/adamw.h"

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "kernels/cpu/bf16_convert.h"
#include "kumiko/core/error.h"

namespace kumiko::cpu {

namespace {

constexpr int64_t kPiece = kAdamWPiece;  // elements a thread takes at a time (many arrays)

// The step's scalar factors, in T (weight decay's factor is per array).
template <typename T>
struct Factors {
  T b1, b2, one_b1, one_b2, step_size, inv_sqrt_bc2, eps, gs;
  Factors(double lr, double beta1, double beta2, double eps_, double grad_scale, int64_t step) {
    KUMIKO_CHECK(step >= 1, "adamw_update: step counts from 1, got ", step);
    const double bc1 = 1.0 - std::pow(beta1, double(step));
    const double bc2 = 1.0 - std::pow(beta2, double(step));
    b1 = T(beta1), b2 = T(beta2), one_b1 = T(1.0 - beta1), one_b2 = T(1.0 - beta2);
    step_size = T(lr / bc1);
    inv_sqrt_bc2 = T(1.0 / std::sqrt(bc2));
    eps = T(eps_), gs = T(grad_scale);
  }
};

// The update of one element; with kWork also work[i] = bf16(param[i]) in the same pass.
template <typename T, bool kWork>
[[gnu::always_inline]] inline void adamw_one(T* param, const T* grad, T* m, T* v, bf16* work, int64_t i,
                                             const Factors<T>& f, T decay) {
  const T g = grad[i] * f.gs;
  const T mi = f.b1 * m[i] + f.one_b1 * g;
  const T vi = f.b2 * v[i] + f.one_b2 * g * g;
  m[i] = mi;
  v[i] = vi;
  const T p = param[i] * decay - f.step_size * mi / (std::sqrt(vi) * f.inv_sqrt_bc2 + f.eps);
  param[i] = p;
  if constexpr (kWork) work[i] = detail::narrow1(p);
}

template <typename T, bool kWork>
void adamw_piece(const AdamWSlice<T>& s, int64_t a, int64_t e, const Factors<T>& f, T decay) {
#pragma omp simd
  for (int64_t i = a; i < e; ++i) adamw_one<T, kWork>(s.param, s.grad, s.m, s.v, s.work, i, f, decay);
}

}  // namespace

template <typename T>
void adamw_update(const AdamWSlice<T>* slices, size_t count, double lr, double beta1, double beta2, double eps,
                  double grad_scale, int64_t step) {
  const Factors<T> f(lr, beta1, beta2, eps, grad_scale, step);
  struct Piece {
    size_t slice;
    int64_t begin, end;
  };
  std::vector<Piece> pieces;
  std::vector<T> decay(count);
  for (size_t k = 0; k < count; ++k) {
    const AdamWSlice<T>& s = slices[k];
    KUMIKO_CHECK(s.work == nullptr || (std::is_same_v<T, float>), "adamw_update: a bf16 working copy needs fp32 masters");
    decay[k] = T(1.0 - lr * s.weight_decay);
    const int64_t piece = s.after && s.align > 0 ? std::max<int64_t>(1, kPiece / s.align) * s.align : kPiece;
    for (int64_t a = 0; a < s.n; a += piece) pieces.push_back({k, a, std::min(s.n, a + piece)});
  }
  const auto np = static_cast<int64_t>(pieces.size());
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t j = 0; j < np; ++j) {
    const Piece& p = pieces[static_cast<size_t>(j)];
    const AdamWSlice<T>& s = slices[p.slice];
    if constexpr (std::is_same_v<T, float>) {
      if (s.work) {
        adamw_piece<T, true>(s, p.begin, p.end, f, decay[p.slice]);
        if (s.after) s.after(s.ctx, p.begin, p.end);
        continue;
      }
    }
    adamw_piece<T, false>(s, p.begin, p.end, f, decay[p.slice]);
  }
}

template <typename T>
void adamw_update(T* param, const T* grad, T* m, T* v, int64_t n, double lr, double beta1,
                  double beta2, double eps, double weight_decay, double grad_scale, int64_t step) {
  const AdamWSlice<T> s{param, grad, m, v, nullptr, n, weight_decay};
  adamw_update(&s, 1, lr, beta1, beta2, eps, grad_scale, step);
}

void adamw_update(float* param, const float* grad, float* m, float* v, bf16* work, int64_t n, double lr,
                  double beta1, double beta2, double eps, double weight_decay, double grad_scale, int64_t step) {
  const AdamWSlice<float> s{param, grad, m, v, work, n, weight_decay};
  adamw_update(&s, 1, lr, beta1, beta2, eps, grad_scale, step);
}

template void adamw_update<float>(float*, const float*, float*, float*, int64_t, double, double,
                                  double, double, double, double, int64_t);
template void adamw_update<double>(double*, const double*, double*, double*, int64_t, double,
                                   double, double, double, double, double, int64_t);
template void adamw_update<float>(const AdamWSlice<float>*, size_t, double, double, double, double, double, int64_t);
template void adamw_update<double>(const AdamWSlice<double>*, size_t, double, double, double, double, double,
                                   int64_t);

}  // namespace kumiko::cpu
