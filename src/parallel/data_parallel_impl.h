#pragma once
// BasicDataParallel<Backend>'s member definitions, included where it is
// instantiated (src/parallel/data_parallel.cpp for the CPU, src/gpu/ for CUDA).
#include <algorithm>
#include <chrono>
#include <cmath>

#include "kumiko/parallel/data_parallel.h"

namespace kumiko::parallel {

namespace detail {
// Splits n elements over `parts` ranks: the first n % parts get one more.
inline std::vector<int64_t> split_counts(int64_t n, int parts) {
  std::vector<int64_t> counts(parts, n / parts);
  for (int r = 0; r < n % parts; ++r) ++counts[r];
  return counts;
}
inline double since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}
}  // namespace detail

template <typename B>
BasicDataParallel<B>::BasicDataParallel(comm::Communicator& dp, Model& model, int zero, int64_t bucket_bytes,
                                        train::AdamWSettings adamw)
    : dp_(dp), model_(model), params_(model.params()), zero_(zero), adamw_(adamw) {
  const int n = static_cast<int>(params_.size());
  param_begin_.resize(n);
  for (int i = 0; i < n; ++i) param_begin_[i] = model.offset(i);
  bucket_of_param_.assign(n, -1);

  std::vector<int64_t> numel(n);
  for (int i = 0; i < n; ++i) numel[i] = params_.numel(i);
  shard_size_ = make_buckets(param_begin_, numel, bucket_bytes, zero_, dp_.size(), dp_.rank(), buckets_);
  for (size_t b = 0; b < buckets_.size(); ++b)
    for (int p : buckets_[b].params) bucket_of_param_[p] = static_cast<int>(b);
  moments_size_ = zero_ == 1 ? shard_size_ : params_.total_numel();
  // One zeroed block: m, v (and the reduced gradient shard with ZeRO-1).
  const int64_t elems = state_elements(zero_, shard_size_, params_.total_numel());
  auto* mem = static_cast<Grad*>(be().allocate(static_cast<size_t>(elems) * sizeof(Grad)));
  m_ = mem;
  v_ = mem + moments_size_;
  if (zero_ == 1) shard_grads_ = mem + 2 * moments_size_;
}

template <typename B>
int64_t BasicDataParallel<B>::make_buckets(const std::vector<int64_t>& begin, const std::vector<int64_t>& numel,
                                           int64_t bucket_bytes, int zero, int dp, int rank, std::vector<Bucket>& out) {
  const int n = static_cast<int>(begin.size());
  const int64_t min_elems = std::max<int64_t>(bucket_bytes / static_cast<int64_t>(sizeof(Grad)), 1);
  out.clear();
  Bucket current;
  auto close = [&] {
    if (current.params.empty()) return;
    const int lo = current.params.back(), hi = current.params.front();
    current.begin = begin[lo];
    current.end = begin[hi] + numel[hi];
    current.pending = static_cast<int>(current.params.size());
    out.push_back(std::move(current));
    current = Bucket();
  };
  int64_t elems = 0;
  for (int i = n - 1; i >= 0; --i) {
    current.params.push_back(i);
    elems += numel[i];
    if (elems >= min_elems) {
      close();
      elems = 0;
    }
  }
  close();
  int64_t shard = 0;
  if (zero == 1)
    for (auto& b : out) {
      b.counts = detail::split_counts(b.end - b.begin, dp);
      int64_t offset = b.begin;
      for (int r = 0; r < rank; ++r) offset += b.counts[r];
      b.own_begin = offset;
      b.own_end = offset + b.counts[rank];
      b.shard_offset = shard;
      shard += b.counts[rank];
    }
  return shard;
}

template <typename B>
int64_t BasicDataParallel<B>::optimizer_elements(const std::vector<int64_t>& begin, const std::vector<int64_t>& numel,
                                                 int64_t total, int zero, int64_t bucket_bytes, int dp, int rank) {
  std::vector<Bucket> buckets;
  const int64_t shard = zero == 1 ? make_buckets(begin, numel, bucket_bytes, zero, dp, rank, buckets) : 0;
  return state_elements(zero, shard, total);
}

template <typename B>
template <typename F>
void BasicDataParallel<B>::for_param_ranges(int64_t begin, int64_t end, F&& f) const {
  for (size_t i = 0; i < params_.size(); ++i) {
    const int64_t a = std::max(begin, param_begin_[i]);
    const int64_t e = std::min(end, param_begin_[i] + params_.numel(static_cast<int>(i)));
    if (a < e) f(static_cast<int>(i), a, e);
  }
}

template <typename B>
void BasicDataParallel<B>::start(Bucket& b) {
  Grad* grads = model_.flat_grads();
  if (zero_ == 1)
    b.request = be().ireduce_scatter(dp_, grads + b.begin, shard_grads_ + b.shard_offset, b.counts);
  else
    b.request = be().iall_reduce(dp_, grads + b.begin, b.end - b.begin);
}

template <typename B>
void BasicDataParallel<B>::on_grad_ready(int param_index) {
  if (!armed_) return;
  Bucket& b = buckets_[bucket_of_param_[param_index]];
  if (--b.pending == 0) start(b);
  // Give MPI a chance to progress the reductions already in flight.
  for (auto& other : buckets_)
    if (other.request) other.request->test();
}

template <typename B>
double BasicDataParallel<B>::finish_reduction() {
  const auto t0 = std::chrono::steady_clock::now();
  for (auto& b : buckets_)
    if (!b.request) start(b);
  for (auto& b : buckets_) {
    b.request->wait();
    b.request.reset();
    b.pending = static_cast<int>(b.params.size());
  }
  armed_ = false;
  return detail::since(t0);
}

template <typename B>
void BasicDataParallel<B>::set_norm_weights(std::vector<double> weights, std::vector<comm::Communicator*> groups) {
  norm_weights_ = std::move(weights);
  norm_groups_ = std::move(groups);
}

template <typename B>
double BasicDataParallel<B>::grad_norm() {
  double ss = 0;
  if (norm_weights_.empty()) {
    ss = zero_ == 1 ? be().sum_squares(shard_grads_, shard_size_)
                    : be().sum_squares(model_.flat_grads(), params_.total_numel());
  } else {
    // Every weighted range's sum in one call (one host synchronization on a GPU),
    // then combined in a fixed order.
    std::vector<std::pair<const Grad*, int64_t>> ranges;
    std::vector<double> weights;
    auto add = [&](int i, const Grad* g, int64_t n) {
      if (norm_weights_[i] == 0) return;
      ranges.push_back({g, n});
      weights.push_back(norm_weights_[i]);
    };
    if (zero_ == 1) {
      for (auto& b : buckets_)
        for_param_ranges(b.own_begin, b.own_end, [&](int i, int64_t a, int64_t e) {
          add(i, shard_grads_ + b.shard_offset + (a - b.own_begin), e - a);
        });
    } else {
      for_param_ranges(0, params_.total_numel(),
                       [&](int i, int64_t a, int64_t e) { add(i, model_.flat_grads() + a, e - a); });
    }
    const std::vector<double> sums = be().sum_squares(ranges);
    for (size_t k = 0; k < sums.size(); ++k) ss += sums[k] * weights[k];
  }
  // The partial sums are host doubles: reduced over the host groups.
  if (zero_ == 1) dp_host().all_reduce(&ss, 1, comm::ReduceOp::sum);
  for (auto* g : norm_groups_)
    if (g->size() > 1) g->all_reduce(&ss, 1, comm::ReduceOp::sum);
  return std::sqrt(ss);
}

template <typename B>
double BasicDataParallel<B>::step(double lr, double grad_scale) {
  ++steps_;
  Grad* values = model_.flat_master();
  auto* work = model_.flat_work();
  const Grad* grads = model_.flat_grads();
  typename B::AdamW h;
  h.lr = lr;
  h.beta1 = adamw_.beta1;
  h.beta2 = adamw_.beta2;
  h.eps = adamw_.eps;
  h.weight_decay = adamw_.weight_decay;
  h.grad_scale = grad_scale;
  h.step = steps_;
  std::vector<typename B::AdamWRange> ranges;
  auto range = [&](int i, int64_t a, const Grad* g, Grad* m, Grad* v, int64_t n) {
    ranges.push_back({values + a, work + a, g, m, v, n, params_.spec(i).decay});
  };
  if (zero_ == 0) {
    for_param_ranges(0, params_.total_numel(), [&](int i, int64_t a, int64_t e) {
      range(i, a, grads + a, m_ + a, v_ + a, e - a);
    });
    be().adamw(ranges, h);
    return 0.0;
  }
  for (auto& b : buckets_)
    for_param_ranges(b.own_begin, b.own_end, [&](int i, int64_t a, int64_t e) {
      const int64_t s = b.shard_offset + (a - b.own_begin);
      range(i, a, shard_grads_ + s, m_ + s, v_ + s, e - a);
    });
  be().adamw(ranges, h);
  const auto t0 = std::chrono::steady_clock::now();
  for (auto& b : buckets_) b.request = be().iall_gather(dp_, values + b.begin, b.counts);
  for (auto& b : buckets_) {
    b.request->wait();
    b.request.reset();
  }
  // The working copy of the gathered master weights (bf16; nothing for fp32).
  be().refresh_work(work, values, params_.total_numel());
  return detail::since(t0);
}

template <typename B>
void BasicDataParallel<B>::gather_moments(std::vector<Grad>& m, std::vector<Grad>& v) {
  const int64_t total = params_.total_numel();
  m.assign(total, Grad(0));
  v.assign(total, Grad(0));
  if (zero_ == 0) {
    be().to_host(m.data(), m_, total);
    be().to_host(v.data(), v_, total);
    return;
  }
  // Each rank's slices into the full arrays, then gathered on the host (dp_host()).
  for (auto& b : buckets_) {
    be().to_host(m.data() + b.own_begin, m_ + b.shard_offset, b.own_end - b.own_begin);
    be().to_host(v.data() + b.own_begin, v_ + b.shard_offset, b.own_end - b.own_begin);
    dp_host().all_gather(m.data() + b.begin, b.counts);
    dp_host().all_gather(v.data() + b.begin, b.counts);
  }
}

template <typename B>
void BasicDataParallel<B>::scatter_moments(const Grad* m, const Grad* v) {
  if (zero_ == 0) {
    be().from_host(m_, m, moments_size_);
    be().from_host(v_, v, moments_size_);
    return;
  }
  for (auto& b : buckets_) {
    be().from_host(m_ + b.shard_offset, m + b.own_begin, b.own_end - b.own_begin);
    be().from_host(v_ + b.shard_offset, v + b.own_begin, b.own_end - b.own_begin);
  }
}

}  // namespace kumiko::parallel
