// bf16 <-> fp32 conversions over arrays. The bit manipulations of core/bf16.h written
// out on integers so that the loops vectorise (no memcpy or branch per element).
#include "kumiko/ops/bf16.h"

#include <cstring>

namespace kumiko::cpu {

namespace {

inline uint32_t bits_of(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

inline float float_of(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// Round to nearest even; NaN -> quiet NaN (branch-free select).
inline uint16_t round_bits(uint32_t u) {
  const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  const uint32_t nan = (u >> 16) | 0x40u;
  return static_cast<uint16_t>((u & 0x7fffffffu) > 0x7f800000u ? nan : rounded);
}

}  // namespace

void widen(float* dst, const bf16* src, int64_t n) {
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) dst[i] = float_of(static_cast<uint32_t>(src[i].bits) << 16);
}

void narrow(bf16* dst, const float* src, int64_t n) {
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) dst[i].bits = round_bits(bits_of(src[i]));
}

void add_narrow(bf16* dst, const float* src, int64_t n) {
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i)
    dst[i].bits = round_bits(bits_of(float_of(static_cast<uint32_t>(dst[i].bits) << 16) + src[i]));
}

}  // namespace kumiko::cpu
