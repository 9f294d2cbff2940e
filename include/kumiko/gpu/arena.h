#pragma once
// DeviceArena: all of a model's device memory in one cudaMalloc made at start, so
// that nothing is allocated in the step loop (and an out-of-memory shows up before
// the first step, with the size asked for).
//
// Two passes over the same allocation code: a counting arena (no device memory)
// measures, then a real one of that size hands out the same pointers' worth:
//   DeviceArena sizing;            plan(sizing);   // take() returns nullptr, counts bytes
//   DeviceArena arena(sizing.used()); plan(arena);  // real pointers
#include <cstddef>
#include <cstdint>
#include <string>

namespace kumiko::gpu {

class DeviceArena {
 public:
  DeviceArena() = default;               // counting only
  explicit DeviceArena(size_t capacity, const std::string& what = "model");  // cudaMalloc(capacity)
  ~DeviceArena();
  DeviceArena(const DeviceArena&) = delete;
  DeviceArena& operator=(const DeviceArena&) = delete;

  // n elements of T, 256-byte aligned; nullptr from a counting arena. Throws when
  // the arena is exhausted (a planning bug: both passes must ask for the same).
  template <typename T>
  T* take(int64_t n) {
    return static_cast<T*>(take_bytes(static_cast<size_t>(n) * sizeof(T)));
  }
  void* take_bytes(size_t bytes);
  size_t used() const { return used_; }
  size_t capacity() const { return capacity_; }

 private:
  char* base_ = nullptr;
  size_t capacity_ = 0;
  size_t used_ = 0;
};

}  // namespace kumiko::gpu
