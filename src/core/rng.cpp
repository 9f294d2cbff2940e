#include "kumiko/core/rng.h"

#include <cmath>
#include <numbers>

namespace kumiko::rng {
namespace {

constexpr uint32_t kMul0 = 0xD2511F53u;
constexpr uint32_t kMul1 = 0xCD9E8D57u;
constexpr uint32_t kWeyl0 = 0x9E3779B9u;
constexpr uint32_t kWeyl1 = 0xBB67AE85u;

inline void mulhilo(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
  const uint64_t p = static_cast<uint64_t>(a) * b;
  hi = static_cast<uint32_t>(p >> 32);
  lo = static_cast<uint32_t>(p);
}

// Maps 32 random bits to a float strictly inside (0, 1).
inline float to_unit(uint32_t bits) {
  return (static_cast<float>(bits >> 8) + 0.5f) * (1.0f / 16777216.0f);
}

}  // namespace

Block philox(uint64_t key, uint64_t counter_hi, uint64_t counter_lo) {
  Block c = {static_cast<uint32_t>(counter_lo), static_cast<uint32_t>(counter_lo >> 32),
             static_cast<uint32_t>(counter_hi), static_cast<uint32_t>(counter_hi >> 32)};
  uint32_t k0 = static_cast<uint32_t>(key);
  uint32_t k1 = static_cast<uint32_t>(key >> 32);
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, lo0, hi1, lo1;
    mulhilo(kMul0, c[0], hi0, lo0);
    mulhilo(kMul1, c[2], hi1, lo1);
    c = {hi1 ^ c[1] ^ k0, lo1, hi0 ^ c[3] ^ k1, lo0};
    k0 += kWeyl0;
    k1 += kWeyl1;
  }
  return c;
}

uint64_t stream_key(uint64_t seed, std::string_view name) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char ch : name) {
    h ^= ch;
    h *= 0x100000001b3ull;
  }
  // Mix the seed in with one Philox block so that nearby seeds give unrelated keys.
  const Block b = philox(h, 0x6b756d696b6full /* "kumiko" */, seed);
  return (static_cast<uint64_t>(b[1]) << 32) | b[0];
}

float uniform(uint64_t key, uint64_t index) { return to_unit(philox(key, 0, index)[0]); }

float normal(uint64_t key, uint64_t index) {
  const Block b = philox(key, 0, index);
  const float u1 = to_unit(b[0]);
  const float u2 = to_unit(b[1]);
  return std::sqrt(-2.0f * std::log(u1)) * std::cos(2.0f * std::numbers::pi_v<float> * u2);
}

void fill_normal(float* dst, size_t n, uint64_t seed, std::string_view name, float mean,
                 float std, uint64_t offset) {
  const uint64_t key = stream_key(seed, name);
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < n; ++i) dst[i] = mean + std * normal(key, offset + i);
}

}  // namespace kumiko::rng
