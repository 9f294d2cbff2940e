#include "kumiko/parallel/data_parallel.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "kumiko/ops/adamw.h"
#include "kumiko/ops/elementwise.h"

namespace kumiko::parallel {

namespace {
using Clock = std::chrono::steady_clock;
double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// Splits n elements over `parts` ranks: the first n % parts get one more.
std::vector<int64_t> split_counts(int64_t n, int parts) {
  std::vector<int64_t> counts(parts, n / parts);
  for (int r = 0; r < n % parts; ++r) ++counts[r];
  return counts;
}
}  // namespace

DataParallel::DataParallel(comm::Communicator& dp, model::ParameterStore<float>& params, int zero,
                           int64_t bucket_bytes, train::AdamWSettings adamw)
    : dp_(dp), params_(params), zero_(zero), adamw_(adamw) {
  const float* base = params.flat_values().data();
  const int n = static_cast<int>(params.size());
  param_begin_.resize(n);
  for (int i = 0; i < n; ++i) param_begin_[i] = params.value(i) - base;
  bucket_of_param_.assign(n, -1);

  // Buckets from the last parameter backwards (backward's order).
  const int64_t min_elems = std::max<int64_t>(bucket_bytes / static_cast<int64_t>(sizeof(float)), 1);
  Bucket current;
  auto close = [&] {
    if (current.params.empty()) return;
    const int lo = current.params.back(), hi = current.params.front();
    current.begin = param_begin_[lo];
    current.end = param_begin_[hi] + params.numel(hi);
    current.pending = static_cast<int>(current.params.size());
    for (int p : current.params) bucket_of_param_[p] = static_cast<int>(buckets_.size());
    buckets_.push_back(std::move(current));
    current = Bucket();
  };
  int64_t elems = 0;
  for (int i = n - 1; i >= 0; --i) {
    current.params.push_back(i);
    elems += params.numel(i);
    if (elems >= min_elems) {
      close();
      elems = 0;
    }
  }
  close();

  if (zero_ == 1) {
    for (auto& b : buckets_) {
      b.counts = split_counts(b.end - b.begin, dp_.size());
      int64_t offset = b.begin;
      for (int r = 0; r < dp_.rank(); ++r) offset += b.counts[r];
      b.own_begin = offset;
      b.own_end = offset + b.counts[dp_.rank()];
      b.shard_offset = shard_size_;
      shard_size_ += b.counts[dp_.rank()];
    }
    m_.assign(shard_size_, 0.0f);
    v_.assign(shard_size_, 0.0f);
    shard_grads_.assign(shard_size_, 0.0f);
  } else {
    m_.assign(params.total_numel(), 0.0f);
    v_.assign(params.total_numel(), 0.0f);
  }
}

template <typename F>
void DataParallel::for_param_ranges(int64_t begin, int64_t end, F&& f) const {
  for (size_t i = 0; i < params_.size(); ++i) {
    const int64_t a = std::max(begin, param_begin_[i]);
    const int64_t e = std::min(end, param_begin_[i] + params_.numel(static_cast<int>(i)));
    if (a < e) f(static_cast<int>(i), a, e);
  }
}

void DataParallel::start(Bucket& b) {
  float* grads = params_.flat_grads().data();
  if (zero_ == 1)
    b.request = dp_.ireduce_scatter(grads + b.begin, shard_grads_.data() + b.shard_offset, b.counts,
                                    comm::ReduceOp::sum);
  else
    b.request = dp_.iall_reduce(grads + b.begin, b.end - b.begin, comm::ReduceOp::sum);
}

void DataParallel::on_grad_ready(int param_index) {
  if (!armed_) return;
  Bucket& b = buckets_[bucket_of_param_[param_index]];
  if (--b.pending == 0) start(b);
  // Give MPI a chance to progress the reductions already in flight.
  for (auto& other : buckets_)
    if (other.request) other.request->test();
}

double DataParallel::finish_reduction() {
  const auto t0 = Clock::now();
  for (auto& b : buckets_)
    if (!b.request) start(b);
  for (auto& b : buckets_) {
    b.request->wait();
    b.request.reset();
    b.pending = static_cast<int>(b.params.size());
  }
  armed_ = false;
  return since(t0);
}

void DataParallel::set_norm_weights(std::vector<double> weights, std::vector<comm::Communicator*> groups) {
  norm_weights_ = std::move(weights);
  norm_groups_ = std::move(groups);
}

double DataParallel::grad_norm() {
  double ss = 0;
  if (norm_weights_.empty()) {
    ss = zero_ == 1 ? cpu::sum_squares(shard_grads_.data(), shard_size_)
                    : cpu::sum_squares(params_.flat_grads().data(), params_.flat_grads().numel());
  } else {
    auto add = [&](int i, const float* g, int64_t n) {
      if (norm_weights_[i] != 0) ss += cpu::sum_squares(g, n) * norm_weights_[i];
    };
    if (zero_ == 1) {
      for (auto& b : buckets_)
        for_param_ranges(b.own_begin, b.own_end, [&](int i, int64_t a, int64_t e) {
          add(i, shard_grads_.data() + b.shard_offset + (a - b.own_begin), e - a);
        });
    } else {
      for_param_ranges(0, params_.total_numel(), [&](int i, int64_t a, int64_t e) {
        add(i, params_.flat_grads().data() + a, e - a);
      });
    }
  }
  if (zero_ == 1) dp_.all_reduce(&ss, 1, comm::ReduceOp::sum);
  for (auto* g : norm_groups_)
    if (g->size() > 1) g->all_reduce(&ss, 1, comm::ReduceOp::sum);
  return std::sqrt(ss);
}

double DataParallel::step(double lr, double grad_scale) {
  ++steps_;
  float* values = params_.flat_values().data();
  const float* grads = params_.flat_grads().data();
  auto update = [&](int i, float* p, const float* g, float* m, float* v, int64_t n) {
    const double wd = params_.spec(i).decay ? adamw_.weight_decay : 0.0;
    cpu::adamw_update(p, g, m, v, n, lr, adamw_.beta1, adamw_.beta2, adamw_.eps, wd, grad_scale, steps_);
  };
  if (zero_ == 0) {
    for_param_ranges(0, params_.total_numel(), [&](int i, int64_t a, int64_t e) {
      update(i, values + a, grads + a, m_.data() + a, v_.data() + a, e - a);
    });
    return 0.0;
  }
  for (auto& b : buckets_)
    for_param_ranges(b.own_begin, b.own_end, [&](int i, int64_t a, int64_t e) {
      const int64_t s = b.shard_offset + (a - b.own_begin);
      update(i, values + a, shard_grads_.data() + s, m_.data() + s, v_.data() + s, e - a);
    });
  const auto t0 = Clock::now();
  for (auto& b : buckets_) b.request = dp_.iall_gather(values + b.begin, b.counts);
  for (auto& b : buckets_) {
    b.request->wait();
    b.request.reset();
  }
  return since(t0);
}

void DataParallel::gather_moments(std::vector<float>& m, std::vector<float>& v) {
  const int64_t total = params_.total_numel();
  if (zero_ == 0) {
    m = m_;
    v = v_;
    return;
  }
  m.assign(total, 0.0f);
  v.assign(total, 0.0f);
  for (auto& b : buckets_) {
    std::copy_n(m_.data() + b.shard_offset, b.own_end - b.own_begin, m.data() + b.own_begin);
    std::copy_n(v_.data() + b.shard_offset, b.own_end - b.own_begin, v.data() + b.own_begin);
    dp_.all_gather(m.data() + b.begin, b.counts);
    dp_.all_gather(v.data() + b.begin, b.counts);
  }
}

void DataParallel::scatter_moments(const float* m, const float* v) {
  if (zero_ == 0) {
    std::copy_n(m, m_.size(), m_.data());
    std::copy_n(v, v_.size(), v_.data());
    return;
  }
  for (auto& b : buckets_) {
    std::copy_n(m + b.own_begin, b.own_end - b.own_begin, m_.data() + b.shard_offset);
    std::copy_n(v + b.own_begin, b.own_end - b.own_begin, v_.data() + b.shard_offset);
  }
}

}  // namespace kumiko::parallel
