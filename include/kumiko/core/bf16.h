#pragma once
// bfloat16 on the host: the 16 high bits of an IEEE float (8-bit exponent, 7-bit
// mantissa). The CPU backend's bf16 precision stores activations and the working copy of
// the weights in it; the communicator moves it (comm::BFloat16 is this type).
// Conversions round to nearest even, as the GPU's __float2bfloat16 and PyTorch's
// .to(torch.bfloat16) do; a NaN stays a (quiet) NaN.
#include <cstdint>
#include <cstring>

namespace kumiko {

struct bf16 {
  uint16_t bits;
  explicit operator float() const {
    const uint32_t u = static_cast<uint32_t>(bits) << 16;
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
  }
};

inline float to_float(bf16 x) { return static_cast<float>(x); }

inline bf16 to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16{static_cast<uint16_t>((u >> 16) | 0x40)};  // quiet NaN
  return bf16{static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16)};
}
// Whole arrays: kumiko/ops/bf16.h (kernels/cpu).

// The arithmetic type of a storage type: the CPU kernels templated on what they load
// and store compute bf16 data in fp32 (statistics, weight gradients and the like are
// math_t<S> too) and float / double data in their own type.
template <typename S>
struct math_of {
  using type = S;
};
template <>
struct math_of<bf16> {
  using type = float;
};
template <typename S>
using math_t = typename math_of<S>::type;

}  // namespace kumiko
