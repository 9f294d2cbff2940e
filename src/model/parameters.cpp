#include "kumiko/model/parameters.h"

#include <vector>

#include "kumiko/core/rng.h"

namespace kumiko::model {

Shape ParameterSpec::local_shape() const {
  switch (split) {
    case Split::none:
      return shape;
    case Split::rows: {
      int64_t rows = 0;
      for (const auto& [b, e] : row_ranges) rows += e - b;
      Shape local = shape;
      local[0] = rows;
      return local;
    }
    case Split::cols:
      return Shape{shape[0], col_end - col_begin};
  }
  return shape;
}

template <typename T>
int ParameterStore<T>::declare(ParameterSpec spec) {
  KUMIKO_CHECK(values_.empty(), "declare() after allocate()");
  KUMIKO_CHECK(!by_name_.count(spec.name), "duplicate parameter ", spec.name);
  const int index = static_cast<int>(specs_.size());
  by_name_[spec.name] = index;
  specs_.push_back(std::move(spec));
  return index;
}

template <typename T>
void ParameterStore<T>::allocate() {
  int64_t total = 0;
  offsets_ = flat_offsets<T>(specs_, &total);
  values_ = Tensor<T>({total});
  grads_ = Tensor<T>({total});
  values_.zero();
  grads_.zero();
}

template <typename T>
void ParameterStore<T>::initialize(uint64_t seed) {
  for (size_t i = 0; i < specs_.size(); ++i) {
    const auto& s = specs_[i];
    T* dst = value(static_cast<int>(i));
    const int64_t n = numel(static_cast<int>(i));
    switch (s.init) {
      case Init::zeros:
        std::fill(dst, dst + n, T(0));
        break;
      case Init::ones:
        std::fill(dst, dst + n, T(1));
        break;
      case Init::normal: {
        // Element (r, c) of the logical tensor draws counter r * cols + c: a shard
        // holds exactly the values of its slice of the one-process tensor.
        std::vector<float> tmp(n);
        s.for_each_run([&](int64_t local, int64_t logical, int64_t count) {
          rng::fill_normal(tmp.data() + local, static_cast<size_t>(count), seed, s.name, 0.0f, s.std,
                           static_cast<uint64_t>(logical));
        });
        std::copy(tmp.begin(), tmp.end(), dst);
        break;
      }
    }
  }
}

template <typename T>
int ParameterStore<T>::index(const std::string& name) const {
  auto it = by_name_.find(name);
  KUMIKO_CHECK(it != by_name_.end(), "no parameter named ", name);
  return it->second;
}

template class ParameterStore<float>;
template class ParameterStore<double>;

}  // namespace kumiko::model
