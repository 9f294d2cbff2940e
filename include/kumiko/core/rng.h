#pragma once
// Counter-based random numbers (ARCHITECTURE.md rule 1).
//
// Every random value is a pure function of (seed, stream key, counter): Philox
// 4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11).
// Parameter initialization uses key = hash(tensor name) and counter = logical
// element index, so any slice of a tensor can be generated on its own and every
// parallel layout starts from the same logical weights.
#include <array>
#include <cstddef>
#include <cstdint>
#include <string_view>

namespace kumiko::rng {

using Block = std::array<uint32_t, 4>;

// One Philox4x32-10 block for (key, counter).
Block philox(uint64_t key, uint64_t counter_hi, uint64_t counter_lo);

// FNV-1a 64-bit hash of a string, combined with the seed: the stream key.
uint64_t stream_key(uint64_t seed, std::string_view name);

// Uniform in (0, 1) and standard normal for element `index` of stream `key`.
float uniform(uint64_t key, uint64_t index);
float normal(uint64_t key, uint64_t index);

// dst[i] = mean + std * normal(key(seed, name), offset + i), i in [0, n).
void fill_normal(float* dst, size_t n, uint64_t seed, std::string_view name, float mean,
                 float std, uint64_t offset = 0);

}  // namespace kumiko::rng
