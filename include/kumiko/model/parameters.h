#pragma once
// Parameters: named logical tensors (ARCHITECTURE.md), stored in one flat buffer
// for values and one for gradients so that optimizers, gradient clipping and
// gradient reduction work on contiguous memory.
#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "kumiko/core/tensor.h"

namespace kumiko::model {

enum class Init { normal, zeros, ones };

// Which part of a logical 2-D tensor a tensor-parallel rank holds.
enum class Split {
  none,  // replicated: the whole tensor on every tp rank
  rows,  // the rows listed in `row_ranges` (column-parallel weights, vocab shards)
  cols,  // columns [col_begin, col_end) of every row (row-parallel weights)
};

struct ParameterSpec {
  std::string name;   // e.g. "blocks.3.attn.qkv.weight"
  Shape shape;        // logical shape
  Init init = Init::normal;
  float std = 0.02f;  // for Init::normal
  bool decay = false; // AdamW weight decay applies (matmul weights only)
  Split split = Split::none;
  std::vector<std::pair<int64_t, int64_t>> row_ranges;  // Split::rows: [begin, end) row ranges held, in order
  int64_t col_begin = 0, col_end = 0;                   // Split::cols

  // The shape this rank stores.
  Shape local_shape() const;
  // Calls f(local_offset, logical_offset, count) for each contiguous run of the local
  // tensor (row-major) inside the logical tensor.
  template <typename F>
  void for_each_run(F&& f) const {
    const int64_t cols = shape.size() > 1 ? shape[1] : 1;
    if (split == Split::none) {
      f(int64_t{0}, int64_t{0}, numel_of(shape));
    } else if (split == Split::rows) {
      int64_t local = 0;
      for (const auto& [b, e] : row_ranges) {
        f(local, b * cols, (e - b) * cols);
        local += (e - b) * cols;
      }
    } else {
      const int64_t width = col_end - col_begin;
      for (int64_t r = 0; r < shape[0]; ++r) f(r * width, r * cols + col_begin, width);
    }
  }
};

// ParameterStore<T>'s flat layout of `specs` (local shapes): each tensor's offset, every
// tensor starting on a 64-byte boundary with zero padding in between; *total is the
// padded length. The GPU model lays its buffers out the same way (src/gpu/model.cpp).
template <typename T>
std::vector<int64_t> flat_offsets(const std::vector<ParameterSpec>& specs, int64_t* total) {
  constexpr int64_t kAlign = 64 / static_cast<int64_t>(sizeof(T));
  std::vector<int64_t> offsets;
  int64_t p = 0;
  for (const auto& s : specs) {
    offsets.push_back(p);
    p += (numel_of(s.local_shape()) + kAlign - 1) / kAlign * kAlign;
  }
  *total = p;
  return offsets;
}

template <typename T>
class ParameterStore {
 public:
  // Declares a parameter; returns its index. All declarations precede allocate().
  int declare(ParameterSpec spec);
  // Allocates the flat value and gradient buffers (gradients zeroed).
  void allocate();
  // Counter-based initialization: element i of tensor `name` is a pure function of
  // (seed, name, i), so any slice of any tensor can be generated independently.
  void initialize(uint64_t seed);

  size_t size() const { return specs_.size(); }
  const ParameterSpec& spec(int i) const { return specs_[i]; }
  int index(const std::string& name) const;  // KUMIKO_CHECK if absent
  bool contains(const std::string& name) const { return by_name_.count(name) != 0; }
  T* value(int i) { return values_.data() + offsets_[i]; }
  const T* value(int i) const { return values_.data() + offsets_[i]; }
  T* grad(int i) { return grads_.data() + offsets_[i]; }
  const T* grad(int i) const { return grads_.data() + offsets_[i]; }
  int64_t numel(int i) const { return numel_of(specs_[i].local_shape()); }  // local elements
  int64_t total_numel() const { return values_.numel(); }

  Tensor<T>& flat_values() { return values_; }
  Tensor<T>& flat_grads() { return grads_; }
  const Tensor<T>& flat_values() const { return values_; }
  const Tensor<T>& flat_grads() const { return grads_; }
  void zero_grads() { grads_.zero(); }

 private:
  std::vector<ParameterSpec> specs_;
  std::vector<int64_t> offsets_;
  std::unordered_map<std::string, int> by_name_;
  Tensor<T> values_;
  Tensor<T> grads_;
};

}  // namespace kumiko::model
