#pragma once
// The CUDA backend: the ops of backend::Cpu (include/kumiko/backend/cpu.h lists
// them) on one GPU, run by kernels/cuda (or cuBLASLt / cuDNN as reference paths) on
// one compute stream. T = float (fp32) or cuda::bf16 (mixed precision):
//   Act  = T      activations and the working copy of the weights the GEMMs read;
//   Grad = float  master weights, gradients (the wgrad GEMM writes fp32), AdamW moments;
//   Stat = float  norm statistics, log-sum-exp, losses.
// Memory: the model's arena is one cudaMalloc (DeviceArena); the kernels' shared
// workspace is sized by prepare() before the first step.
//
// Collectives are stream-ordered. A device communicator (NCCL, device_stream() !=
// nullptr) runs on its own stream: the backend records an event on the compute
// stream that the communicator's stream waits for, queues the operation, and makes
// the compute stream wait for an event recorded after it (no host synchronization).
// A host communicator (MPI) is host-staged: the data is copied to pinned host memory
// once the compute stream has produced it, reduced by MPI, and copied back on the
// compute stream. That is how several ranks share one GPU (NCCL refuses two ranks on
// one device), so every tp/pp/dp layout can be tested on a single GPU.
//
// Internal to src/gpu (it includes the CUDA headers); the rest of kumiko sees the
// engine (include/kumiko/gpu/engine.h).
#include <cuda_runtime.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "kernels/cuda/adamw.cuh"
#include "kernels/cuda/attention.cuh"
#include "kernels/cuda/cross_entropy.cuh"
#include "kernels/cuda/cublaslt.cuh"
#include "kernels/cuda/cudnn_attention.cuh"
#include "kernels/cuda/elementwise.cuh"
#include "kernels/cuda/embedding.cuh"
#include "kernels/cuda/gelu.cuh"
#include "kernels/cuda/gemm.cuh"
#include "kernels/cuda/layernorm.cuh"
#include "kernels/cuda/linear.cuh"
#include "kernels/cuda/norm.cuh"
#include "kernels/cuda/parallel.cuh"
#include "kernels/cuda/rmsnorm.cuh"
#include "kernels/cuda/rope.cuh"
#include "kernels/cuda/swiglu.cuh"
#include "kumiko/backend/adamw.h"
#include "kumiko/comm/communicator.h"
#include "kumiko/core/error.h"
#include "kumiko/gpu/arena.h"
#include "kumiko/gpu/options.h"

namespace kumiko::backend {

// Pinned host buffers reused across steps (host-staged collectives, token uploads).
class PinnedPool {
 public:
  PinnedPool() = default;
  PinnedPool(const PinnedPool&) = delete;
  PinnedPool& operator=(const PinnedPool&) = delete;
  ~PinnedPool() {
    for (auto& b : bufs_) cudaFreeHost(b.p);
  }
  void* acquire(size_t bytes) {
    for (auto& b : bufs_)
      if (!b.used && b.bytes >= bytes) {
        b.used = true;
        return b.p;
      }
    Buf b;
    b.bytes = std::max<size_t>(bytes, 256);
    KUMIKO_CUDA_CHECK(cudaMallocHost(&b.p, b.bytes));
    b.used = true;
    bufs_.push_back(b);
    return b.p;
  }
  void release(void* p) {
    for (auto& b : bufs_)
      if (b.p == p) b.used = false;
  }

 private:
  struct Buf {
    void* p = nullptr;
    size_t bytes = 0;
    bool used = false;
  };
  std::vector<Buf> bufs_;
};

template <typename T>
class Cuda {
 public:
  using Act = T;
  using Grad = float;
  using Stat = float;
  static constexpr bool kHost = false;
  // zero_grads() zeroes every gradient; linear_backward's overwrite_dw is then never set
  // (the lazy zeroing of the CPU backends is not yet measured on a GPU).
  static constexpr bool kLazyGradZero = false;
  static constexpr bool kBf16 = std::is_same_v<T, cuda::bf16>;

  explicit Cuda(const gpu::GpuOptions& options = {}) : opt_(options) {
    KUMIKO_USER_CHECK(opt_.attention != "cudnn" || kBf16,
                      "backend.attention = cudnn needs backend.dtype = bf16 (cuDNN's fused attention has no fp32 "
                      "kernels); got backend.dtype = fp32");
    if (opt_.matmul == "cublas") cublas_ = std::make_unique<cuda::CublasLt>();
    if (opt_.attention == "cudnn") cudnn_ = std::make_unique<cuda::CudnnAttention>();
    KUMIKO_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    KUMIKO_CUDA_CHECK(cudaEventCreateWithFlags(&ready_, cudaEventDisableTiming));
    KUMIKO_CUDA_CHECK(cudaEventCreateWithFlags(&done_, cudaEventDisableTiming));
  }
  ~Cuda() {
    cudaStreamSynchronize(stream_);
    pending_.clear();
    cudaEventDestroy(ready_);
    cudaEventDestroy(done_);
    cudaStreamDestroy(stream_);
  }
  Cuda(const Cuda&) = delete;
  Cuda& operator=(const Cuda&) = delete;

  cudaStream_t stream() const { return stream_; }
  size_t device_bytes() const {
    size_t n = 0;
    for (const auto& b : blocks_) n += b->capacity();
    return n;
  }

  template <typename Dims>
  void prepare(const Dims& d, int64_t batch, int64_t seq_len, int tp, int64_t params) {
    KUMIKO_USER_CHECK(d.D % 8 == 0 && d.D <= 128, "backend.device = cuda: the head dimension d_model / n_heads = ",
                      d.D, " must be a multiple of 8 and at most 128");
    const int64_t N = batch * seq_len, C = d.C;
    size_t ws = 0;
    ws = std::max(ws, cuda::layernorm_backward_workspace_bytes(N, C));
    ws = std::max(ws, cuda::rmsnorm_backward_workspace_bytes(N, C));
    for (int64_t cols : {C, d.qkv_width() / tp, d.F / tp}) ws = std::max(ws, cuda::bias_backward_workspace_bytes(N, cols));
    ws = std::max(ws, cuda::attention_backward_workspace_bytes(batch, seq_len, d.Hq / tp, d.Hkv / tp, d.D));
    ws = std::max(ws, cuda::sum_squares_workspace_bytes(params));
    if (cudnn_) ws = std::max(ws, cudnn_->workspace_bytes(batch, seq_len, d.Hq / tp, d.Hkv / tp, d.D));
    if (ws <= workspace_bytes_) return;
    workspace_bytes_ = ws;
    blocks_.push_back(std::make_unique<gpu::DeviceArena>(ws + 256, "kernel workspace"));
    workspace_ = blocks_.back()->take_bytes(ws);
    if (!norm_out_) {
      blocks_.push_back(std::make_unique<gpu::DeviceArena>(256, "grad-norm result"));
      norm_out_ = blocks_.back()->template take<double>(1);
    }
    // Embedding groups: 2 + 2U + N ints with U <= N distinct tokens. Sized here, not in
    // the step: a cudaMalloc may block while NCCL kernels wait for their peers.
    scratch_ints(2 + 3 * N);
  }

  // ---- memory ----
  void* allocate(size_t bytes) {
    blocks_.push_back(std::make_unique<gpu::DeviceArena>(std::max<size_t>(bytes, 256),
                                                         "model (parameters, optimizer state and activations)"));
    void* p = blocks_.back()->take_bytes(std::max<size_t>(bytes, 256));
    KUMIKO_CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, stream_));
    return p;
  }
  template <typename X>
  void zero(X* x, int64_t n) {
    if (n > 0) KUMIKO_CUDA_CHECK(cudaMemsetAsync(x, 0, static_cast<size_t>(n) * sizeof(X), stream_));
  }
  template <typename X>
  void copy(X* dst, const X* src, int64_t n) {
    if (n > 0 && dst != src)
      KUMIKO_CUDA_CHECK(cudaMemcpyAsync(dst, src, static_cast<size_t>(n) * sizeof(X), cudaMemcpyDeviceToDevice, stream_));
  }
  template <typename X>
  void add_inplace(X* out, const X* a, int64_t n) {
    cuda::add_inplace(out, a, n, stream_);
  }
  template <typename X>
  void to_host(X* host, const X* x, int64_t n) {
    if (n > 0)
      KUMIKO_CUDA_CHECK(cudaMemcpyAsync(host, x, static_cast<size_t>(n) * sizeof(X), cudaMemcpyDeviceToHost, stream_));
    synchronize();
  }
  template <typename X>
  void from_host(X* x, const X* host, int64_t n) {
    if (n > 0)
      KUMIKO_CUDA_CHECK(cudaMemcpyAsync(x, host, static_cast<size_t>(n) * sizeof(X), cudaMemcpyHostToDevice, stream_));
    synchronize();
  }
  // Uploads host token ids into the slot's device buffer (staged through pinned
  // memory, so the copy is asynchronous and the host array may change at once).
  const int32_t* tokens(int32_t* slot, const int32_t* host, int64_t n) {
    auto* h = static_cast<int32_t*>(staging_.acquire(static_cast<size_t>(n) * sizeof(int32_t)));
    KUMIKO_CUDA_CHECK(cudaStreamSynchronize(stream_));  // an earlier copy from this buffer is done
    std::memcpy(h, host, static_cast<size_t>(n) * sizeof(int32_t));
    KUMIKO_CUDA_CHECK(cudaMemcpyAsync(slot, h, static_cast<size_t>(n) * sizeof(int32_t), cudaMemcpyHostToDevice, stream_));
    staging_.release(h);
    return slot;
  }
  void synchronize() {
    KUMIKO_CUDA_CHECK(cudaStreamSynchronize(stream_));
    for (auto& r : pending_) r->wait();
    pending_.clear();
  }

  // ---- layers' ops ----
  void linear(Act* y, const Act* x, const Act* w, const Act* b, int64_t N, int64_t in, int64_t out,
              Act* gelu_pre = nullptr) {
    cuda::GemmArgs g;
    g.layout = cuda::Layout::NT;
    g.M = N;
    g.N = out;
    g.K = in;
    KUMIKO_CHECK(!gelu_pre || b, "GELU epilogue without a bias");
    if constexpr (kBf16) {
      if (gelu_pre) {
        // GELU of the stored bf16 pre-activation, not of the GEMM's fp32 sum: what
        // train.recompute = selective recomputes (gelu_forward on the same values), the
        // CPU's bf16 backend and PyTorch's autocast compute. One more elementwise pass
        // (a read of the pre-activation) than the fused epilogue.
        g.epilogue = cuda::Epilogue::bias;
        mm<T, T>(g, x, w, gelu_pre, b, nullptr);
        cuda::gelu_forward(y, gelu_pre, N * out, stream_);
        return;
      }
    }
    // fp32: the epilogue's GELU reads the value it stores as the pre-activation.
    g.epilogue = gelu_pre ? cuda::Epilogue::bias_gelu : (b ? cuda::Epilogue::bias : cuda::Epilogue::none);
    mm<T, T>(g, x, w, y, b, gelu_pre);
  }
  void linear_backward(Act* dx, bool accumulate_dx, Grad* dw, bool overwrite_dw, Grad* db, const Act* dy,
                       const Act* x, const Act* w, int64_t N, int64_t in, int64_t out) {
    if (overwrite_dw) zero(dw, out * in);  // not reached while kLazyGradZero is false
    if (dx) {
      cuda::GemmArgs g;
      g.layout = cuda::Layout::NN;
      g.M = N;
      g.N = in;
      g.K = out;
      g.accumulate = accumulate_dx;
      mm<T, T>(g, dy, w, dx, nullptr, nullptr);
    }
    cuda::GemmArgs g;
    g.layout = cuda::Layout::TN;
    g.M = out;
    g.N = in;
    g.K = N;
    g.accumulate = true;
    mm<T, float>(g, dy, x, dw, nullptr, nullptr);
    if (db) cuda::bias_backward(db, dy, N, out, workspace_, stream_);
  }
  void add_bias(Act* out, const Act* b, int64_t rows, int64_t C) { cuda::add_rows(out, b, 0, rows, 1, C, stream_); }
  void bias_backward(Grad* db, const Act* dy, int64_t rows, int64_t C) {
    cuda::bias_backward(db, dy, rows, C, workspace_, stream_);
  }
  void gelu_backward(Act* dx, const Act* dy, const Act* pre, int64_t n) {
    cuda::gelu_backward(dx, dy, pre, n, /*overwrite=*/true, stream_);
  }
  void gelu_forward(Act* out, const Act* pre, int64_t n) { cuda::gelu_forward(out, pre, n, stream_); }
  void swiglu_forward(Act* out, const Act* gate, const Act* up, int64_t n) {
    cuda::swiglu_forward(out, gate, up, n, stream_);
  }
  void swiglu_backward(Act* dgate, Act* dup, const Act* dy, const Act* gate, const Act* up, int64_t n) {
    cuda::swiglu_backward(dgate, dup, dy, gate, up, n, /*overwrite=*/true, stream_);
  }
  void norm_forward(bool rms, Act* out, Stat* mean, Stat* rstd, const Act* x, const Act* w, const Act* b, int64_t N,
                    int64_t C, double eps) {
    if (rms)
      cuda::rmsnorm_forward(out, rstd, x, w, N, C, static_cast<float>(eps), stream_);
    else
      cuda::layernorm_forward(out, mean, rstd, x, w, b, N, C, static_cast<float>(eps), stream_);
  }
  void norm_backward(bool rms, Act* dx, Grad* dw, Grad* db, const Act* dy, const Act* x, const Act* w,
                     const Stat* mean, const Stat* rstd, int64_t N, int64_t C) {
    if (rms)
      cuda::rmsnorm_backward(dx, dw, dy, x, w, rstd, N, C, workspace_, stream_);
    else
      cuda::layernorm_backward(dx, dw, db, dy, x, w, mean, rstd, N, C, workspace_, stream_);
  }
  void rope_forward(Act* qkv, int64_t B, int64_t Tn, int64_t Hq, int64_t Hkv, int64_t D, double theta) {
    cuda::rope_forward(qkv, B, Tn, Hq, Hkv, D, theta, stream_);
  }
  void rope_backward(Act* dqkv, int64_t B, int64_t Tn, int64_t Hq, int64_t Hkv, int64_t D, double theta) {
    cuda::rope_backward(dqkv, B, Tn, Hq, Hkv, D, theta, stream_);
  }
  void rope_at(Act* qkv, int64_t pos, int64_t Hq, int64_t Hkv, int64_t D, double theta) {
    cuda::rope_at(qkv, pos, Hq, Hkv, D, theta, stream_);
  }
  void attention_decode(Act* out, const Act* q, const Act* k, const Act* v, int64_t len, int64_t Hq, int64_t Hkv,
                        int64_t D) {
    cuda::attention_decode(out, q, k, v, len, Hq, Hkv, D, stream_);
  }
  void attention_forward(Act* out, Stat* lse, const Act* qkv, int64_t B, int64_t Tn, int64_t Hq, int64_t Hkv,
                         int64_t D) {
    if constexpr (kBf16)
      if (cudnn_) return cudnn_->forward(out, lse, qkv, B, Tn, Hq, Hkv, D, workspace_, stream_);
    cuda::attention_forward(out, lse, qkv, B, Tn, Hq, Hkv, D, stream_);
  }
  void attention_backward(Act* dqkv, const Act* dy, const Act* qkv, const Act* out, const Stat* lse, int64_t B,
                          int64_t Tn, int64_t Hq, int64_t Hkv, int64_t D) {
    if constexpr (kBf16)
      if (cudnn_) return cudnn_->backward(dqkv, dy, qkv, out, lse, B, Tn, Hq, Hkv, D, workspace_, stream_);
    cuda::attention_backward(dqkv, dy, qkv, out, lse, B, Tn, Hq, Hkv, D, workspace_, stream_);
  }
  void embed(Act* out, const int32_t* ids, const Act* table, int64_t N, int64_t C, int64_t v0, int64_t Vl,
             int64_t V) {
    if (v0 == 0 && Vl == V) return cuda::embedding_forward(out, ids, table, static_cast<const T*>(nullptr), N, 1, C, stream_);
    cuda::embedding_forward_shard(out, ids, table, N, C, v0, Vl, stream_);
  }
  void add_positions(Act* x, const Act* pos, int64_t first, int64_t rows, int64_t Tn, int64_t C) {
    cuda::add_rows(x, pos, first, rows, Tn, C, stream_);
  }
  // Deterministic (no atomics): the positions grouped by token on the host
  // (cuda::embedding_groups), only the tokens of this vocabulary shard.
  void embed_backward(Grad* dtable, const Act* dx, const int32_t* host_ids, int64_t N, int64_t C, int64_t v0,
                      int64_t Vl, int64_t V) {
    std::vector<int32_t> local(static_cast<size_t>(N));
    for (int64_t i = 0; i < N; ++i) {
      const int64_t id = host_ids[i] - v0;
      local[static_cast<size_t>(i)] = id >= 0 && id < Vl ? static_cast<int32_t>(id) : -1;
    }
    const std::vector<int32_t> g = drop_group(cuda::embedding_groups(local.data(), N), -1);
    if (g[0] == 0) return;
    auto* h = static_cast<int32_t*>(staging_.acquire(g.size() * sizeof(int32_t)));
    KUMIKO_CUDA_CHECK(cudaStreamSynchronize(stream_));
    std::memcpy(h, g.data(), g.size() * sizeof(int32_t));
    int32_t* dev = scratch_ints(static_cast<int64_t>(g.size()));
    KUMIKO_CUDA_CHECK(cudaMemcpyAsync(dev, h, g.size() * sizeof(int32_t), cudaMemcpyHostToDevice, stream_));
    staging_.release(h);
    cuda::embedding_backward(dtable, dx, dev, std::min(N, Vl), C, stream_);
  }
  void positions_backward(Grad* dpos, const Act* dx, int64_t B, int64_t Tn, int64_t C) {
    cuda::add_positions_backward(dpos, dx, B, Tn, C, stream_);
  }

  // ---- cross-entropy ----
  void cross_entropy(Stat* losses, Act* logits, const int32_t* targets, int64_t N, int64_t V, bool backward,
                     double scale) {
    cuda::cross_entropy(losses, logits, targets, N, V, backward, static_cast<float>(scale), stream_);
  }
  void ce_row_max(Stat* mx, const Act* logits, int64_t N, int64_t Vl) { cuda::ce_row_max(mx, logits, N, Vl, stream_); }
  void ce_sums(Stat* sum, Stat* tgt, const Act* logits, const Stat* mx, const int32_t* targets, int64_t N,
               int64_t Vl, int64_t v0) {
    cuda::ce_sums(sum, tgt, logits, mx, targets, N, Vl, v0, stream_);
  }
  void ce_finish(Stat* losses, Act* logits, const Stat* mx, const Stat* sum, const Stat* tgt, const int32_t* targets,
                 int64_t N, int64_t Vl, int64_t v0, bool backward, double scale) {
    cuda::cross_entropy_shard_finish(losses, logits, mx, sum, tgt, targets, N, Vl, v0, backward,
                                     static_cast<float>(scale), stream_);
  }
  double sum(const Stat* x, int64_t n) {
    std::vector<float> h(static_cast<size_t>(n));
    to_host(h.data(), x, n);
    double total = 0;
    for (float v : h) total += v;
    return total;
  }

  // ---- optimizer ----
  double sum_squares(const Grad* x, int64_t n) {
    cuda::sum_squares(norm_out_, x, n, workspace_, stream_);
    double h = 0;
    to_host(&h, norm_out_, 1);
    return h;
  }
  // Several ranges with one synchronization: each sum into its own device slot, then
  // one copy to the host (the weighted grad norm of tp/pp layouts sums per tensor).
  std::vector<double> sum_squares(const std::vector<std::pair<const Grad*, int64_t>>& ranges) {
    std::vector<double> out(ranges.size());
    if (ranges.empty()) return out;
    if (static_cast<int64_t>(ranges.size()) > norm_slots_n_) {
      // First step only (the ranges are the same every step); no NCCL work is in flight here.
      blocks_.push_back(std::make_unique<gpu::DeviceArena>(ranges.size() * sizeof(double) + 256, "grad-norm sums"));
      norm_slots_ = blocks_.back()->template take<double>(static_cast<int64_t>(ranges.size()));
      norm_slots_n_ = static_cast<int64_t>(ranges.size());
    }
    for (size_t i = 0; i < ranges.size(); ++i)
      cuda::sum_squares(norm_slots_ + i, ranges[i].first, ranges[i].second, workspace_, stream_);
    to_host(out.data(), norm_slots_, static_cast<int64_t>(out.size()));
    return out;
  }
  using AdamWRange = backend::AdamWRange<Act, Grad>;
  using AdamW = AdamWStep;
  // Every range in one multi-tensor launch (the descriptors go up with the step).
  void adamw(const std::vector<AdamWRange>& ranges, const AdamW& h) {
    if (ranges.empty()) return;
    std::vector<cuda::AdamWTensor> list;
    int64_t max_n = 0;
    for (const auto& r : ranges) {
      cuda::AdamWTensor t;
      t.param = r.param;
      if constexpr (kBf16) t.param_bf16 = r.work;
      t.grad = r.grad;
      t.m = r.m;
      t.v = r.v;
      t.n = r.n;
      t.weight_decay = r.decay ? static_cast<float>(h.weight_decay) : 0.0f;
      max_n = std::max(max_n, r.n);
      list.push_back(t);
    }
    const size_t bytes = list.size() * sizeof(cuda::AdamWTensor);
    // Sized on the first step (the ranges depend on the data-parallel layout); no
    // NCCL work is in flight here (the reduction and the grad norm have completed).
    if (bytes > adamw_list_bytes_) {
      blocks_.push_back(std::make_unique<gpu::DeviceArena>(bytes, "AdamW descriptors"));
      adamw_list_ = static_cast<cuda::AdamWTensor*>(blocks_.back()->take_bytes(bytes));
      adamw_list_bytes_ = bytes;
    }
    auto* staged = static_cast<cuda::AdamWTensor*>(staging_.acquire(bytes));
    KUMIKO_CUDA_CHECK(cudaStreamSynchronize(stream_));
    std::memcpy(staged, list.data(), bytes);
    KUMIKO_CUDA_CHECK(cudaMemcpyAsync(adamw_list_, staged, bytes, cudaMemcpyHostToDevice, stream_));
    cuda::AdamWStep s;
    s.lr = static_cast<float>(h.lr);
    s.beta1 = static_cast<float>(h.beta1);
    s.beta2 = static_cast<float>(h.beta2);
    s.eps = static_cast<float>(h.eps);
    s.grad_scale = static_cast<float>(h.grad_scale);
    s.bias_correction1 = static_cast<float>(1.0 - std::pow(h.beta1, static_cast<double>(h.step)));
    s.bias_correction2 = static_cast<float>(1.0 - std::pow(h.beta2, static_cast<double>(h.step)));
    cuda::adamw_multi_tensor(adamw_list_, static_cast<int>(list.size()), max_n, s, stream_);
    synchronize();  // the step ends on the host too (the trainer times it)
    staging_.release(staged);
  }
  void refresh_work(Act* work, const Grad* master, int64_t n) {
    if constexpr (kBf16) cuda::cast(work, master, n, stream_);
  }

  // ---- collectives ----
  template <typename X>
  void all_reduce(comm::Communicator& g, X* x, int64_t n, comm::ReduceOp op) {
    if (g.size() == 1 || n == 0) return;
    if (void* s = g.device_stream()) {
      std::erase_if(pending_, [](const auto& r) { return r->test(); });  // releases the watchdog's slots
      pending_.push_back(ordered(s, [&] { return g.iall_reduce(wire(x), n, op); }));
      return;
    }
    auto* h = stage_down(x, n);
    g.all_reduce(wire(h), n, op);
    stage_up(x, h, n);
  }
  template <typename X>
  void all_gather(comm::Communicator& g, X* x, const std::vector<int64_t>& counts) {
    iall_gather(g, x, counts)->wait();
  }
  template <typename X>
  void reduce_scatter(comm::Communicator& g, const X* send, X* recv, const std::vector<int64_t>& counts) {
    ireduce_scatter(g, send, recv, counts)->wait();
  }
  template <typename X>
  std::unique_ptr<comm::Request> iall_reduce(comm::Communicator& g, X* x, int64_t n) {
    if (g.size() == 1 || n == 0) return done();
    if (void* s = g.device_stream()) return overlapped(s, [&] { return g.iall_reduce(wire(x), n, comm::ReduceOp::sum); });
    auto* h = stage_down(x, n);
    return staged(g.iall_reduce(wire(h), n, comm::ReduceOp::sum), x, h, n);
  }
  template <typename X>
  std::unique_ptr<comm::Request> ireduce_scatter(comm::Communicator& g, const X* send, X* recv,
                                                 const std::vector<int64_t>& counts) {
    const int64_t total = sum_of(counts), mine = counts[static_cast<size_t>(g.rank())];
    if (g.size() == 1) {
      copy(recv, send, mine);
      return done();
    }
    if (void* s = g.device_stream())
      return overlapped(s, [&] { return g.ireduce_scatter(wire(send), wire(recv), counts, comm::ReduceOp::sum); });
    auto* h = stage_down(send, total);
    auto* out = static_cast<X*>(staging_.acquire(static_cast<size_t>(mine) * sizeof(X)));
    auto inner = g.ireduce_scatter(wire(h), wire(out), counts, comm::ReduceOp::sum);
    return staged(std::move(inner), recv, out, mine, h);
  }
  template <typename X>
  std::unique_ptr<comm::Request> iall_gather(comm::Communicator& g, X* x, const std::vector<int64_t>& counts) {
    if (g.size() == 1) return done();
    if (void* s = g.device_stream()) return ordered(s, [&] { return g.iall_gather(wire(x), counts); });
    const int64_t total = sum_of(counts);
    auto* h = stage_down(x, total);
    return staged(g.iall_gather(wire(h), counts), x, h, total);
  }
  template <typename X>
  std::unique_ptr<comm::Request> isend(comm::Communicator& g, const X* x, int64_t n, int peer, int tag) {
    if (void* s = g.device_stream()) return ordered(s, [&] { return g.isend(wire(x), n, peer, tag); });
    auto* h = stage_down(x, n);
    auto inner = g.isend(wire(h), n, peer, tag);
    return staged<X>(std::move(inner), nullptr, h, 0);
  }
  template <typename X>
  void recv(comm::Communicator& g, X* x, int64_t n, int peer, int tag) {
    if (void* s = g.device_stream()) {
      // NCCL receives in posting order per peer; the pipeline posts in schedule order.
      before(s);
      g.recv(wire(x), n, peer, tag);
      return;
    }
    auto* h = static_cast<X*>(staging_.acquire(static_cast<size_t>(n) * sizeof(X)));
    KUMIKO_CUDA_CHECK(cudaStreamSynchronize(stream_));  // copies still reading a released buffer are done
    g.recv(wire(h), n, peer, tag);
    stage_up(x, h, n);
  }

  std::string describe() const;

 private:
  template <typename Tin, typename Tout>
  void mm(const cuda::GemmArgs& g, const Tin* A, const Tin* Bm, Tout* C, const Tin* bias, Tout* pre) {
    if (cublas_)
      cublas_->gemm<Tin, Tout>(g, A, Bm, C, bias, pre, stream_);
    else
      cuda::gemm<Tin, Tout>(g, A, Bm, C, bias, pre, stream_);
  }
  static int64_t sum_of(const std::vector<int64_t>& c) {
    int64_t s = 0;
    for (int64_t x : c) s += x;
    return s;
  }
  // The communicator's view of an element type (bf16 travels as comm::BFloat16).
  template <typename X>
  static auto* wire(X* p) {
    if constexpr (std::is_same_v<std::remove_const_t<X>, cuda::bf16>) {
      using W = std::conditional_t<std::is_const_v<X>, const comm::BFloat16, comm::BFloat16>;
      return reinterpret_cast<W*>(p);
    } else {
      return p;
    }
  }
  // The communicator's stream waits for the compute queued so far.
  void before(void* comm_stream) {
    KUMIKO_CUDA_CHECK(cudaEventRecord(ready_, stream_));
    KUMIKO_CUDA_CHECK(cudaStreamWaitEvent(static_cast<cudaStream_t>(comm_stream), ready_, 0));
  }
  // The compute stream waits for the communication queued so far.
  void after(void* comm_stream) {
    KUMIKO_CUDA_CHECK(cudaEventRecord(done_, static_cast<cudaStream_t>(comm_stream)));
    KUMIKO_CUDA_CHECK(cudaStreamWaitEvent(stream_, done_, 0));
  }
  // A device collective ordered on both sides; its request is kept until the next
  // host synchronization (so the watchdog sees it) and returned for waiting.
  template <typename F>
  std::unique_ptr<comm::Request> ordered(void* s, F&& issue) {
    before(s);
    auto r = issue();
    after(s);
    return r;
  }
  // A device collective the compute stream does not wait for: the data-parallel
  // buckets, reduced while backward goes on with earlier layers. Its wait() waits on
  // the host for the request's event, before any kernel reads the result.
  template <typename F>
  std::unique_ptr<comm::Request> overlapped(void* s, F&& issue) {
    before(s);
    return issue();
  }
  class Done : public comm::Request {
   public:
    void wait() override {}
    bool test() override { return true; }
  };
  static std::unique_ptr<comm::Request> done() { return std::make_unique<Done>(); }
  template <typename X>
  X* stage_down(const X* x, int64_t n) {
    auto* h = static_cast<X*>(staging_.acquire(static_cast<size_t>(n) * sizeof(X)));
    if (n > 0)
      KUMIKO_CUDA_CHECK(cudaMemcpyAsync(h, x, static_cast<size_t>(n) * sizeof(X), cudaMemcpyDeviceToHost, stream_));
    KUMIKO_CUDA_CHECK(cudaStreamSynchronize(stream_));
    return h;
  }
  template <typename X>
  void stage_up(X* x, X* h, int64_t n) {
    if (n > 0)
      KUMIKO_CUDA_CHECK(cudaMemcpyAsync(x, h, static_cast<size_t>(n) * sizeof(X), cudaMemcpyHostToDevice, stream_));
    KUMIKO_CUDA_CHECK(cudaStreamSynchronize(stream_));  // h is reused next
    staging_.release(h);
  }
  // A host-staged operation in flight: on completion its result (n elements of
  // host memory h) is copied back to x (nullptr: nothing to copy, e.g. a send).
  template <typename X>
  class Staged : public comm::Request {
   public:
    Staged(Cuda* be, std::unique_ptr<comm::Request> inner, X* x, X* h, int64_t n, void* extra)
        : be_(be), inner_(std::move(inner)), x_(x), h_(h), n_(n), extra_(extra) {}
    ~Staged() override {
      if (!finished_) try {
          wait();
        } catch (...) {
        }
    }
    void wait() override {
      if (finished_) return;
      inner_->wait();
      finish();
    }
    bool test() override {
      if (finished_) return true;
      if (!inner_->test()) return false;
      finish();
      return true;
    }

   private:
    void finish() {
      finished_ = true;
      if (x_)
        be_->stage_up(x_, h_, n_);
      else
        be_->staging_.release(h_);
      if (extra_) be_->staging_.release(extra_);
    }
    Cuda* be_;
    std::unique_ptr<comm::Request> inner_;
    X* x_;
    X* h_;
    int64_t n_;
    void* extra_;
    bool finished_ = false;
  };
  template <typename X>
  std::unique_ptr<comm::Request> staged(std::unique_ptr<comm::Request> inner, X* x, X* h, int64_t n,
                                        void* extra = nullptr) {
    return std::make_unique<Staged<X>>(this, std::move(inner), x, h, n, extra);
  }
  // Embedding groups without the group of `id` (the layout of cuda::embedding_groups).
  static std::vector<int32_t> drop_group(const std::vector<int32_t>& g, int32_t id) {
    const int32_t U = g[0];
    int drop = -1;
    for (int32_t u = 0; u < U; ++u)
      if (g[1 + u] == id) drop = u;
    if (drop < 0) return g;
    const int32_t* ids = g.data() + 1;
    const int32_t* offs = g.data() + 1 + U;
    const int32_t* pos = g.data() + 2 + 2 * U;
    std::vector<int32_t> out;
    out.push_back(U - 1);
    for (int32_t u = 0; u < U; ++u)
      if (u != drop) out.push_back(ids[u]);
    std::vector<int32_t> new_pos;
    std::vector<int32_t> new_offs;
    for (int32_t u = 0; u < U; ++u) {
      if (u == drop) continue;
      new_offs.push_back(static_cast<int32_t>(new_pos.size()));
      for (int32_t k = offs[u]; k < offs[u + 1]; ++k) new_pos.push_back(pos[k]);
    }
    new_offs.push_back(static_cast<int32_t>(new_pos.size()));
    out.insert(out.end(), new_offs.begin(), new_offs.end());
    out.insert(out.end(), new_pos.begin(), new_pos.end());
    return out;
  }
  int32_t* scratch_ints(int64_t n) {
    if (n > scratch_ints_n_) {
      blocks_.push_back(std::make_unique<gpu::DeviceArena>(static_cast<size_t>(n) * sizeof(int32_t) + 256,
                                                           "embedding groups"));
      scratch_ints_ = blocks_.back()->template take<int32_t>(n);
      scratch_ints_n_ = n;
    }
    return scratch_ints_;
  }

  gpu::GpuOptions opt_;
  cudaStream_t stream_{};
  cudaEvent_t ready_{}, done_{};
  std::unique_ptr<cuda::CublasLt> cublas_;
  std::unique_ptr<cuda::CudnnAttention> cudnn_;
  std::vector<std::unique_ptr<gpu::DeviceArena>> blocks_;
  void* workspace_ = nullptr;
  size_t workspace_bytes_ = 0;
  double* norm_out_ = nullptr;
  double* norm_slots_ = nullptr;
  int64_t norm_slots_n_ = 0;
  cuda::AdamWTensor* adamw_list_ = nullptr;
  size_t adamw_list_bytes_ = 0;
  int32_t* scratch_ints_ = nullptr;
  int64_t scratch_ints_n_ = 0;
  PinnedPool staging_;
  std::vector<std::unique_ptr<comm::Request>> pending_;
};

}  // namespace kumiko::backend
