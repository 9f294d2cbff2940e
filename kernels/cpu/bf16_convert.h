#pragma once
// Element conversions between bf16 and fp32 for kernels that read or write bf16 inside
// their own loops (internal header). The bit manipulations of core/bf16.h written on
// integers, without memcpy or branches, so that loops under `omp simd` vectorise:
// widening is a shift; narrowing rounds to nearest even and keeps a NaN a quiet NaN.
#include <bit>
#include <cstdint>

#include "kumiko/core/bf16.h"

namespace kumiko::cpu::detail {

[[gnu::always_inline]] inline float widen1(bf16 x) {
  return std::bit_cast<float>(static_cast<uint32_t>(x.bits) << 16);
}

[[gnu::always_inline]] inline bf16 narrow1(float f) {
  const uint32_t u = std::bit_cast<uint32_t>(f);
  const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  const uint32_t nan = (u >> 16) | 0x40u;
  return bf16{static_cast<uint16_t>((u & 0x7fffffffu) > 0x7f800000u ? nan : rounded)};
}

}  // namespace kumiko::cpu::detail
