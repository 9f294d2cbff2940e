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

struct ParameterSpec {
  std::string name;   // e.g. "blocks.3.attn.qkv.weight"
  Shape shape;        // logical shape
  Init init = Init::normal;
  float std = 0.02f;  // for Init::normal
  bool decay = false; // AdamW weight decay applies (matmul weights only)
};

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
  int64_t numel(int i) const { return numel_of(specs_[i].shape); }
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
