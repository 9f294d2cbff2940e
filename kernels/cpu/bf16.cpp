// bf16 <-> fp32 conversions over arrays (kernels/cpu/bf16_convert.h per element).
#include "kumiko/ops/bf16.h"

#include "kernels/cpu/bf16_convert.h"

namespace kumiko::cpu {

using detail::narrow1;
using detail::widen1;

void widen(float* dst, const bf16* src, int64_t n) {
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) dst[i] = widen1(src[i]);
}

void narrow(bf16* dst, const float* src, int64_t n) {
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) dst[i] = narrow1(src[i]);
}

}  // namespace kumiko::cpu
