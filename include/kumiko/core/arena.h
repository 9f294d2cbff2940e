#pragma once
// Arena: carves one block of memory into a model's buffers, so that a backend
// allocates once before the first step and nothing is allocated in the step loop.
//
// The same planning code runs twice: over a counting arena (no memory; take()
// returns nullptr and counts bytes), then over an arena on a block of used()
// bytes, which hands out the same layout:
//   Arena sizing;                 plan(sizing);
//   Arena arena(block, sizing.used()); plan(arena);
// The block is the backend's (host memory on the CPU, one cudaMalloc on a GPU).
#include <array>
#include <cstddef>
#include <cstdint>

#include "kumiko/core/error.h"

namespace kumiko {

class Arena {
 public:
  static constexpr size_t kAlign = 256;  // covers AVX-512 lines and GPU vector loads
  // What a buffer is for, so that a plan can say where the bytes go (kumiko plan).
  enum Use : int { parameters, gradients, activations, workspace, kUses };

  Arena() = default;  // counting only
  Arena(void* base, size_t capacity) : base_(static_cast<char*>(base)), capacity_(capacity) {}

  // n elements of T, kAlign-aligned; nullptr from a counting arena. Throws when the
  // block is exhausted (a planning bug: both passes must ask for the same).
  template <typename T>
  T* take(int64_t n, Use use = workspace) {
    return static_cast<T*>(take_bytes(static_cast<size_t>(n) * sizeof(T), use));
  }
  void* take_bytes(size_t bytes, Use use = workspace) {
    const size_t offset = (used_ + kAlign - 1) / kAlign * kAlign;
    by_use_[use] += offset + bytes - used_;  // alignment padding counts with the buffer
    used_ = offset + bytes;
    if (!base_) return nullptr;
    KUMIKO_CHECK(used_ <= capacity_, "arena exhausted: ", used_, " of ", capacity_, " bytes planned");
    return base_ + offset;
  }
  size_t used() const { return used_; }
  size_t used(Use use) const { return by_use_[use]; }
  bool counting() const { return base_ == nullptr; }

 private:
  char* base_ = nullptr;
  size_t capacity_ = 0;
  size_t used_ = 0;
  std::array<size_t, kUses> by_use_{};
};

}  // namespace kumiko
