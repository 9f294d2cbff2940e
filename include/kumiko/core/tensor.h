#pragma once
// Tensor: a dense, row-major, 64-byte-aligned host array with a shape.
// Templated on the element type so that the same model code runs in float (the
// CPU backend) and in double (finite-difference gradient checks).
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include "kumiko/core/error.h"

namespace kumiko {

using Shape = std::vector<int64_t>;

inline int64_t numel_of(const Shape& shape) {
  return std::accumulate(shape.begin(), shape.end(), int64_t{1}, std::multiplies<>());
}

std::string shape_str(const Shape& shape);  // "[3, 4]"

template <typename T>
class Tensor {
 public:
  Tensor() = default;
  explicit Tensor(Shape shape) : shape_(std::move(shape)), numel_(numel_of(shape_)) {
    KUMIKO_CHECK(numel_ >= 0, "negative tensor size");
    if (numel_ > 0) {
      const size_t bytes = ((static_cast<size_t>(numel_) * sizeof(T) + 63) / 64) * 64;
      void* p = std::aligned_alloc(64, bytes);
      KUMIKO_CHECK(p != nullptr, "out of memory allocating ", bytes, " bytes");
      data_.reset(static_cast<T*>(p), [](T* q) { std::free(q); });
    }
  }

  // Deep copy (Tensor copies share storage; clone() does not).
  Tensor clone() const {
    Tensor t(shape_);
    if (numel_) std::memcpy(t.data(), data(), bytes());
    return t;
  }

  T* data() { return data_.get(); }
  const T* data() const { return data_.get(); }
  const Shape& shape() const { return shape_; }
  int64_t dim(size_t i) const { return shape_.at(i); }
  size_t rank() const { return shape_.size(); }
  int64_t numel() const { return numel_; }
  size_t bytes() const { return static_cast<size_t>(numel_) * sizeof(T); }
  bool empty() const { return numel_ == 0; }

  void zero() {
    if (numel_) std::memset(data(), 0, bytes());
  }
  void fill(T value) { std::fill(data(), data() + numel_, value); }
  T& operator[](int64_t i) { return data_.get()[i]; }
  const T& operator[](int64_t i) const { return data_.get()[i]; }

 private:
  Shape shape_;
  int64_t numel_ = 0;
  std::shared_ptr<T[]> data_;
};

}  // namespace kumiko
