#pragma once
// Data parallelism: gradient buckets reduced across the dp group while backward
// is still running, and ZeRO-1 (optimizer state sharded across dp).
//
// Buckets are contiguous ranges of the flat gradient buffer, formed from the end
// (the last layers, whose gradients backward produces first) until each holds at
// least `bucket_bytes`. When every parameter of a bucket has its final gradient
// (the model's grad-ready hook, on the last micro-batch of a step), the bucket's
// non-blocking reduction starts:
//   zero = 0: all_reduce(sum) in place; every rank then updates all parameters.
//   zero = 1: reduce_scatter(sum): rank r receives the reduced slice r of each
//             bucket, updates only that slice with its shard of AdamW's moments,
//             and all_gather rebuilds the full parameters on every rank.
#include <cstdint>
#include <memory>
#include <vector>

#include "kumiko/comm/communicator.h"
#include "kumiko/model/transformer.h"
#include "kumiko/train/optimizer.h"

namespace kumiko::parallel {

// On either backend's buffers: the model's flat gradients, master weights and
// working copy; the moments (and ZeRO's reduced gradient shard) in backend memory;
// the reductions through the backend's collectives. One AdamW (the backend's, over
// parameter ranges), one grad-norm, one bucketing algorithm for every backend.
template <typename Backend>
class BasicDataParallel {
 public:
  using Model = model::BasicTransformer<Backend>;
  using Grad = typename Backend::Grad;
  BasicDataParallel(comm::Communicator& dp, Model& model, int zero, int64_t bucket_bytes,
                    train::AdamWSettings adamw);
  // The host (MPI) communicator over the same ranks as `dp`, for host values (the
  // grad-norm partial sums, checkpoint moments) when `dp` is a device communicator.
  void set_host_group(comm::Communicator* dp_host) { dp_host_ = dp_host; }

  // Arms the hook for the last micro-batch of a step; returns the hook to install
  // on the model (it ignores calls while not armed).
  void arm() { armed_ = true; }
  void on_grad_ready(int param_index);
  // Waits for every bucket (starting any not yet started). Returns seconds waited.
  double finish_reduction();
  // With tensor or pipeline parallelism the global gradient norm sums over more
  // ranks: each parameter's squares are weighted (1/tp for tensors replicated over
  // tp, 0 for the last pipeline stage's copy of a tied embedding) and summed over
  // `groups` (tp, pp).
  void set_norm_weights(std::vector<double> weights, std::vector<comm::Communicator*> groups);
  // Global gradient L2 norm (identical on every rank).
  double grad_norm();
  // AdamW step (with gradients multiplied by grad_scale), then with zero=1 the
  // all_gather of the updated parameters. Returns seconds spent waiting on comm.
  double step(double lr, double grad_scale);

  int64_t optimizer_steps() const { return steps_; }
  void set_optimizer_steps(int64_t s) { steps_ = s; }
  // AdamW moments in the flat parameter layout (full tensors), for checkpoints:
  // gathered from the shards with zero=1.
  void gather_moments(std::vector<Grad>& m, std::vector<Grad>& v);
  // Sets the moments from full flat-layout arrays (each rank keeps its shard).
  void scatter_moments(const Grad* m, const Grad* v);
  size_t num_buckets() const { return buckets_.size(); }
  int zero() const { return zero_; }
  // Backend memory of the moments: the flat layout with zero = 0, this rank's slices with zero = 1.
  Grad* moments_m() { return m_; }
  Grad* moments_v() { return v_; }
  int64_t shard_elements() const { return shard_size_; }
  // The AdamW state elements (of Grad) rank `rank` of `dp` allocates for parameters at
  // flat offsets `begin` with `numel` elements: m and v, and with ZeRO-1 the reduced
  // gradient shard. The constructor's own bucket plan (kumiko plan sizes memory with it).
  // `total` is the flat layout's size (ParameterStore::total_numel()).
  static int64_t optimizer_elements(const std::vector<int64_t>& begin, const std::vector<int64_t>& numel,
                                    int64_t total, int zero, int64_t bucket_bytes, int dp, int rank);

 private:
  struct Bucket {
    int64_t begin = 0, end = 0;         // flat range
    std::vector<int> params;            // parameter indices inside
    int pending = 0;                    // parameters whose gradient is not ready yet
    std::vector<int64_t> counts;        // zero=1: slice of each dp rank
    int64_t own_begin = 0, own_end = 0; // zero=1: this rank's slice (flat range)
    int64_t shard_offset = 0;           // zero=1: where the slice sits in the shard buffers
    std::unique_ptr<comm::Request> request;
  };
  // Buckets from the last parameter backwards (backward's order), each at least
  // bucket_bytes; with ZeRO-1 (dp > 0) each bucket's slices over dp ranks and this
  // rank's place in the shard. Returns the shard size (0 without ZeRO-1).
  static int64_t make_buckets(const std::vector<int64_t>& begin, const std::vector<int64_t>& numel,
                              int64_t bucket_bytes, int zero, int dp, int rank, std::vector<Bucket>& out);
  // m and v for the flat layout, or with ZeRO-1 m, v and the reduced gradient of the shard.
  static int64_t state_elements(int zero, int64_t shard, int64_t total) { return zero == 1 ? 3 * shard : 2 * total; }
  void start(Bucket& b);
  // Calls f(param_index, flat_begin, flat_end) for every parameter range inside [begin, end).
  template <typename F>
  void for_param_ranges(int64_t begin, int64_t end, F&& f) const;

  Backend& be() { return model_.backend(); }
  comm::Communicator& dp_host() { return dp_host_ ? *dp_host_ : dp_; }
  comm::Communicator* dp_host_ = nullptr;
  comm::Communicator& dp_;
  Model& model_;
  const model::ParameterStore<Grad>& params_;  // specs and the flat layout
  int zero_;
  train::AdamWSettings adamw_;
  std::vector<Bucket> buckets_;
  std::vector<int> bucket_of_param_;
  std::vector<int64_t> param_begin_;  // flat offsets
  bool armed_ = false;
  std::vector<double> norm_weights_;
  std::vector<comm::Communicator*> norm_groups_;
  int64_t steps_ = 0;
  // Backend memory. zero=0: moments for the whole flat buffer; zero=1: for this
  // rank's slices only, and the reduced gradient of those slices.
  Grad *m_ = nullptr, *v_ = nullptr, *shard_grads_ = nullptr;
  int64_t moments_size_ = 0;
  int64_t shard_size_ = 0;
};

using DataParallel = BasicDataParallel<backend::Cpu<float>>;

}  // namespace kumiko::parallel
