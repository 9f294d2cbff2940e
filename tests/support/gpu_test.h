#pragma once
// Helpers for the CUDA kernel tests (ctest label gpu): skip with a message when no
// GPU is visible, device buffers that are poisoned (NaN) before a kernel writes
// them (also viewed off their alignment), host-side bf16 rounding so that the CPU
// reference sees exactly the inputs the GPU sees, and the output tolerance per type.
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>

#include "kernels/cuda/common.cuh"

namespace kumiko::test {

inline bool gpu_available() {
  static const bool ok = kumiko::cuda::device_count() > 0;
  return ok;
}

// First statement of every GPU test.
#define KUMIKO_REQUIRE_GPU()                                                                  \
  do {                                                                                        \
    if (!::kumiko::test::gpu_available())                                                     \
      GTEST_SKIP() << "SKIP: no CUDA device visible (this test runs on a GPU machine, see "  \
                      "scripts/device/gpu_check.sh)";                                         \
  } while (0)

inline float bf16_round(float x) { return __bfloat162float(__float2bfloat16_rn(x)); }
inline std::vector<float> bf16_round(std::vector<float> v) {
  for (auto& x : v) x = bf16_round(x);
  return v;
}

// Host values as the GPU sees them in element type T (float or bf16).
template <typename T>
std::vector<float> as_seen(std::vector<float> v) {
  if constexpr (std::is_same_v<T, cuda::bf16>) v = bf16_round(std::move(v));
  return v;
}

// Relative bound for an output of element type T against a double reference: fp32
// outputs are a few fp32 roundings off (1e-5); a bf16 output is rounded once to 8
// significant bits (2^-9 relative, 1e-2 with margin).
template <typename T>
constexpr double out_tol() {
  return std::is_same_v<T, cuda::bf16> ? 1e-2 : 1e-5;
}

// A device array of T (float or bf16) moved to and from host float vectors.
template <typename T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t n) : n_(n) {
    if (n) KUMIKO_CUDA_CHECK(cudaMalloc(&p_, n * sizeof(T)));
    poison();
  }
  explicit DeviceBuffer(const std::vector<float>& host) : DeviceBuffer(host.size()) { upload(host); }
  ~DeviceBuffer() {
    if (p_) cudaFree(p_);
  }
  DeviceBuffer(DeviceBuffer&& o) noexcept : p_(o.p_), n_(o.n_) { o.p_ = nullptr; }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  T* get() { return p_; }
  const T* get() const { return p_; }
  size_t size() const { return n_; }
  // All bytes 0xFF: a NaN in float and bf16, so an element a kernel forgot shows up.
  void poison() {
    if (n_) KUMIKO_CUDA_CHECK(cudaMemset(p_, 0xFF, n_ * sizeof(T)));
  }
  void upload(const std::vector<float>& host) {
    std::vector<T> tmp(host.size());
    for (size_t i = 0; i < host.size(); ++i) tmp[i] = static_cast<T>(host[i]);
    KUMIKO_CUDA_CHECK(cudaMemcpy(p_, tmp.data(), tmp.size() * sizeof(T), cudaMemcpyHostToDevice));
  }
  std::vector<float> download() const {
    KUMIKO_CUDA_CHECK(cudaDeviceSynchronize());
    std::vector<T> tmp(n_);
    KUMIKO_CUDA_CHECK(cudaMemcpy(tmp.data(), p_, n_ * sizeof(T), cudaMemcpyDeviceToHost));
    std::vector<float> out(n_);
    for (size_t i = 0; i < n_; ++i) out[i] = static_cast<float>(tmp[i]);
    return out;
  }

 private:
  T* p_ = nullptr;
  size_t n_ = 0;
};

// A device array whose element 0 sits `off` elements into its allocation: off = 1
// breaks the 16-byte alignment and forces a kernel's element-wise variant.
template <typename T>
class OffsetBuffer {
 public:
  OffsetBuffer(const std::vector<float>& host, size_t off) : buf_(padded(host, off)), off_(off) {}
  OffsetBuffer(size_t n, size_t off) : buf_(n + off), off_(off) {}  // poisoned
  T* get() { return buf_.get() + off_; }
  std::vector<float> download() const {
    const auto all = buf_.download();
    return {all.begin() + std::ptrdiff_t(off_), all.end()};
  }

 private:
  static std::vector<float> padded(const std::vector<float>& v, size_t off) {
    std::vector<float> p(off, 0.0f);
    p.insert(p.end(), v.begin(), v.end());
    return p;
  }
  DeviceBuffer<T> buf_;
  size_t off_;
};

// Raw bytes (workspaces), poisoned.
class DeviceBytes {
 public:
  explicit DeviceBytes(size_t bytes) : n_(bytes) {
    if (n_) {
      KUMIKO_CUDA_CHECK(cudaMalloc(&p_, n_));
      KUMIKO_CUDA_CHECK(cudaMemset(p_, 0xFF, n_));
    }
  }
  ~DeviceBytes() {
    if (p_) cudaFree(p_);
  }
  DeviceBytes(const DeviceBytes&) = delete;
  DeviceBytes& operator=(const DeviceBytes&) = delete;
  void* get() { return p_; }

 private:
  void* p_ = nullptr;
  size_t n_ = 0;
};


// int32 ids on the device.
class DeviceIds {
 public:
  explicit DeviceIds(const std::vector<int32_t>& host) : n_(host.size()) {
    KUMIKO_CUDA_CHECK(cudaMalloc(&p_, n_ * sizeof(int32_t) + 4));
    KUMIKO_CUDA_CHECK(cudaMemcpy(p_, host.data(), n_ * sizeof(int32_t), cudaMemcpyHostToDevice));
  }
  ~DeviceIds() {
    if (p_) cudaFree(p_);
  }
  DeviceIds(const DeviceIds&) = delete;
  DeviceIds& operator=(const DeviceIds&) = delete;
  const int32_t* get() const { return p_; }

 private:
  int32_t* p_ = nullptr;
  size_t n_ = 0;
};

}  // namespace kumiko::test
