// Rotary position embedding, in place on the q and k heads of packed qkv. A cos/sin
// table [T, D/2] is computed in double per call (cheap next to the rotation). bf16 is
// rotated in fp32 and rounded once on store.
#include "kumiko/ops/rope.h"

#include <cmath>
#include <vector>

#include "kernels/cpu/common.h"
#include "kumiko/core/error.h"

namespace kumiko::cpu {

namespace {

template <typename S>
void rope_apply(S* qkv, int64_t B, int64_t T_, int64_t Hq, int64_t Hkv, int64_t D, double theta,
                math_t<S> sin_sign) {
  using T = math_t<S>;
  KUMIKO_CHECK(D % 2 == 0, "rope: head dim D must be even, got ", D);
  const int64_t half = D / 2;
  std::vector<T> cos_t(static_cast<size_t>(T_ * half)), sin_t(cos_t.size());  // [T, D/2]
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < T_; ++t) {
    for (int64_t i = 0; i < half; ++i) {
      const double inv_freq = std::pow(theta, -2.0 * static_cast<double>(i) / double(D));
      const double angle = static_cast<double>(t) * inv_freq;
      cos_t[t * half + i] = static_cast<T>(std::cos(angle));
      sin_t[t * half + i] = sin_sign * static_cast<T>(std::sin(angle));
    }
  }
  const int64_t row = (Hq + 2 * Hkv) * D;  // stride of one token in qkv
  const int64_t heads = Hq + Hkv;           // rotated heads per token (q then k)
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t t = 0; t < T_; ++t) {
      const T* ct = cos_t.data() + t * half;
      const T* st = sin_t.data() + t * half;
      S* tok = qkv + (b * T_ + t) * row;
      for (int64_t h = 0; h < heads; ++h) {
        S* x = tok + h * D;  // [D]
#pragma omp simd
        for (int64_t i = 0; i < half; ++i) {
          const T x0 = detail::ld(x[i]), x1 = detail::ld(x[i + half]);
          x[i] = detail::st<S>(x0 * ct[i] - x1 * st[i]);
          x[i + half] = detail::st<S>(x1 * ct[i] + x0 * st[i]);
        }
      }
    }
  }
}

}  // namespace

template <typename T>
void rope_forward(T* qkv, int64_t B, int64_t T_, int64_t Hq, int64_t Hkv, int64_t D, double theta) {
  rope_apply(qkv, B, T_, Hq, Hkv, D, theta, math_t<T>(1));
}

template <typename T>
void rope_backward(T* dqkv, int64_t B, int64_t T_, int64_t Hq, int64_t Hkv, int64_t D,
                   double theta) {
  // The rotation is orthogonal: its transpose is the rotation by -angle.
  rope_apply(dqkv, B, T_, Hq, Hkv, D, theta, math_t<T>(-1));
}

template void rope_forward<float>(float*, int64_t, int64_t, int64_t, int64_t, int64_t, double);
template void rope_forward<double>(double*, int64_t, int64_t, int64_t, int64_t, int64_t, double);
template void rope_backward<float>(float*, int64_t, int64_t, int64_t, int64_t, int64_t, double);
template void rope_backward<double>(double*, int64_t, int64_t, int64_t, int64_t, int64_t, double);
template void rope_forward<bf16>(bf16*, int64_t, int64_t, int64_t, int64_t, int64_t, double);
template void rope_backward<bf16>(bf16*, int64_t, int64_t, int64_t, int64_t, int64_t, double);

}  // namespace kumiko::cpu
