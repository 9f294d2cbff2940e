// The GPU transformer: kumiko::model::Transformer's forward and backward, layer by
// layer, on kernels/cuda. The CPU model (src/model/transformer.cpp) is the reference
// this file mirrors; the comments there explain the maths, the ones here the GPU
// specifics (precision, memory, streams).
#include "kumiko/gpu/model.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
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
#include "kernels/cuda/rmsnorm.cuh"
#include "kernels/cuda/rope.cuh"
#include "kernels/cuda/swiglu.cuh"
#include "kumiko/comm/nccl.h"
#include "kumiko/core/error.h"
#include "kumiko/gpu/arena.h"

namespace kumiko::gpu {

using cuda::bf16;
using cuda::Epilogue;
using cuda::GemmArgs;
using cuda::Layout;

namespace {

// Pinned host memory (asynchronous copies need it).
template <typename X>
class Pinned {
 public:
  explicit Pinned(size_t n) { KUMIKO_CUDA_CHECK(cudaMallocHost(reinterpret_cast<void**>(&p_), n * sizeof(X))); }
  ~Pinned() { cudaFreeHost(p_); }
  Pinned(const Pinned&) = delete;
  Pinned& operator=(const Pinned&) = delete;
  X* get() { return p_; }

 private:
  X* p_ = nullptr;
};

}  // namespace

std::vector<std::pair<int64_t, int64_t>> backward_units(const model::Dims& dims) {
  const auto specs = model::parameter_specs(dims);
  int64_t total = 0;
  const auto offsets = model::flat_offsets<float>(specs, &total);
  auto flat = [&](const std::string& name) {
    for (size_t i = 0; i < specs.size(); ++i)
      if (specs[i].name == name) return offsets[i];
    KUMIKO_CHECK(false, "backward_units: no parameter ", name);
    return int64_t{0};
  };
  // The tensors after the last block (final norm, untied head), each block from the
  // last, then the embeddings (which precede block 0 in the flat layout).
  std::vector<std::pair<int64_t, int64_t>> units;
  const int64_t after_blocks = flat("final_norm.weight");
  units.push_back({after_blocks, total});
  for (int64_t l = dims.L - 1; l >= 0; --l) {
    const int64_t begin = flat("blocks." + std::to_string(l) + ".norm1.weight");
    const int64_t end = l + 1 < dims.L ? flat("blocks." + std::to_string(l + 1) + ".norm1.weight") : after_blocks;
    units.push_back({begin, end});
  }
  units.push_back({0, flat("blocks.0.norm1.weight")});
  return units;
}

std::vector<GradientBucket> gradient_buckets(const std::vector<std::pair<int64_t, int64_t>>& units,
                                             int64_t bucket_bytes) {
  // Consecutive units are adjacent in the flat layout, so a bucket is one range.
  std::vector<GradientBucket> buckets;
  GradientBucket current;
  current.begin = std::numeric_limits<int64_t>::max();
  for (size_t u = 0; u < units.size(); ++u) {
    current.begin = std::min(current.begin, units[u].first);
    current.end = std::max(current.end, units[u].second);
    current.last_unit = static_cast<int>(u);
    const int64_t bytes = (current.end - current.begin) * static_cast<int64_t>(sizeof(float));
    if (bytes >= bucket_bytes || u + 1 == units.size()) {
      buckets.push_back(current);
      current = GradientBucket{};
      current.begin = std::numeric_limits<int64_t>::max();
    }
  }
  return buckets;
}

// T: the activation and working-weight type (float or bf16).
template <typename T>
class Model final : public GpuModel {
 public:
  // plan_only: compute the layout and the arena size without touching a device.
  Model(const model::Dims& dims, int64_t batch, int64_t seq_len, const GpuOptions& options, bool plan_only = false);
  size_t planned_bytes() const { return planned_bytes_; }
  ~Model() override;

  int64_t total_numel() const override { return P_; }
  void set_parameters(const float* values) override;
  void get_parameters(float* values) override { download(master_, values, P_); }
  void set_moments(const float* m, const float* v) override;
  void get_moments(float* m, float* v) override {
    download(m_, m, P_);
    download(v_, v, P_);
  }
  void get_grads(float* grads) override { download(grads_, grads, P_); }
  void zero_grads() override { KUMIKO_CUDA_CHECK(cudaMemsetAsync(grads_, 0, P_ * sizeof(float), stream_)); }
  double forward_backward(const int32_t* inputs, const int32_t* targets, int64_t B, int64_t Tn, float loss_scale,
                          bool last_micro_batch) override;
  double loss(const int32_t* inputs, const int32_t* targets, int64_t B, int64_t Tn) override;
  void enable_data_parallel(comm::Communicator* nccl, int64_t bucket_bytes) override;
  double finish_reduction() override;
  double grad_norm() override;
  void adamw(const AdamWHyper& h, double grad_scale, int64_t step) override;
  void poison_gradient() override;
  std::string describe() const override;

 private:
  static constexpr bool kBf16 = std::is_same_v<T, bf16>;
  // Device buffers; planned twice (counting, then real) by plan().
  struct Layer {
    T *res = nullptr, *mid = nullptr, *ln1 = nullptr, *ln2 = nullptr, *qkv = nullptr, *att = nullptr;
    T *h1 = nullptr, *h2 = nullptr, *hact = nullptr;
    float *mean1 = nullptr, *rstd1 = nullptr, *mean2 = nullptr, *rstd2 = nullptr, *lse = nullptr;
  };
  void plan(DeviceArena& a);
  void upload_batch(const int32_t* inputs, const int32_t* targets, int64_t B, int64_t Tn, bool groups);
  void forward(int64_t B, int64_t Tn);
  void backward(int64_t B, int64_t Tn, bool last_micro_batch);
  // Losses (and with backward, dlogits in place of the logits); the losses are
  // copied to pinned host memory, to be summed once the stream has synchronized.
  void cross_entropy(int64_t N, bool backward, float loss_scale);
  double host_mean_loss(int64_t N);
  const T* W(int i) const { return work_ + offsets_[i]; }
  float* G(int i) const { return grads_ + offsets_[i]; }
  const T* Wmaybe(int i) const { return i < 0 ? nullptr : W(i); }

  // y[N, out] = x[N, in] W^T (+ b), optionally with GELU (pre keeps the pre-activation).
  void linear(T* y, const T* x, int w, int b, int64_t N, int64_t in, int64_t out, T* gelu_pre = nullptr);
  // dx[N, in] (= or +=) dy W; dW += dy^T x; db += colsum(dy).
  void linear_backward(T* dx, bool accumulate_dx, int w, int b, const T* dy, const T* x, int64_t N, int64_t in,
                       int64_t out);
  template <typename Tin, typename Tout>
  void mm(const GemmArgs& g, const Tin* A, const Tin* Bm, Tout* C, const Tin* bias, Tout* pre);
  void norm_forward(T* out, float* mean, float* rstd, const T* x, int w, int b, int64_t N);
  void norm_backward(T* dx, int w, int b, const T* dout, const T* x, const float* mean, const float* rstd,
                     int64_t N);
  void grads_ready(int unit);  // backward finished unit `unit` (see units_)
  void download(const float* src, float* dst, int64_t n);

  model::Dims d_;
  int64_t batch_, seq_len_;
  GpuOptions opt_;
  std::vector<model::ParameterSpec> specs_;
  std::vector<int64_t> offsets_;
  int64_t P_ = 0;
  std::vector<model::BlockIndex> block_index_;
  int tokens_ = -1, positions_ = -1, normf_w_ = -1, normf_b_ = -1, head_ = -1;

  cudaStream_t stream_{};
  std::unique_ptr<DeviceArena> arena_;
  size_t planned_bytes_ = 0;
  // Parameters: fp32 master weights, gradients and moments; T working copy (the
  // master itself in fp32).
  float *master_ = nullptr, *grads_ = nullptr, *m_ = nullptr, *v_ = nullptr;
  T* work_ = nullptr;
  cuda::AdamWTensor* adamw_list_ = nullptr;  // device descriptors
  std::vector<cuda::AdamWTensor> adamw_host_;
  int64_t adamw_max_n_ = 0;
  // Activations and scratch.
  std::vector<Layer> layers_;
  T* resL_ = nullptr;  // output of the last block
  T *lnf_ = nullptr, *logits_ = nullptr;
  float *meanf_ = nullptr, *rstdf_ = nullptr, *losses_ = nullptr;
  T *dres_ = nullptr, *dln_ = nullptr, *datt_ = nullptr, *dqkv_ = nullptr, *dh1_ = nullptr, *dh2_ = nullptr,
    *dact_ = nullptr;
  int32_t *ids_ = nullptr, *targets_ = nullptr, *groups_ = nullptr;
  void* workspace_ = nullptr;
  double* norm_out_ = nullptr;
  std::unique_ptr<Pinned<int32_t>> host_ids_;
  std::unique_ptr<Pinned<float>> host_losses_;
  std::unique_ptr<Pinned<double>> host_norm_;
  std::unique_ptr<cuda::CublasLt> cublas_;
  std::unique_ptr<cuda::CudnnAttention> cudnn_;

  // Data parallelism: units of parameters in the order backward completes them
  // (head and final norm, block L-1, ..., block 0, embeddings), each a contiguous
  // flat range; buckets are runs of consecutive units.
  struct Bucket : GradientBucket {
    std::unique_ptr<comm::Request> request;  // the all-reduce in flight
  };
  std::vector<std::pair<int64_t, int64_t>> units_;
  comm::Communicator* nccl_ = nullptr;
  cudaStream_t nccl_stream_{};
  std::vector<Bucket> buckets_;
  std::vector<cudaEvent_t> bucket_events_;
  bool armed_ = false;
};

template <typename T>
Model<T>::Model(const model::Dims& dims, int64_t batch, int64_t seq_len, const GpuOptions& options, bool plan_only)
    : d_(dims), batch_(batch), seq_len_(seq_len), opt_(options), specs_(model::parameter_specs(dims)) {
  offsets_ = model::flat_offsets<float>(specs_, &P_);
  auto idx = [&](const std::string& name) {
    for (size_t i = 0; i < specs_.size(); ++i)
      if (specs_[i].name == name) return static_cast<int>(i);
    return -1;
  };
  tokens_ = idx("embed.tokens.weight");
  positions_ = idx("embed.positions.weight");
  normf_w_ = idx("final_norm.weight");
  normf_b_ = idx("final_norm.bias");
  head_ = d_.tied ? tokens_ : idx("head.weight");
  for (int64_t l = 0; l < d_.L; ++l) block_index_.push_back(model::block_index(l, idx));
  units_ = backward_units(dims);

  KUMIKO_USER_CHECK(opt_.attention != "cudnn" || kBf16,
                    "backend.attention = cudnn needs backend.dtype = bf16 (cuDNN's fused attention has no fp32 "
                    "kernels); got backend.dtype = fp32");
  KUMIKO_USER_CHECK(d_.D % 8 == 0 && d_.D <= 128, "backend.device = cuda: the head dimension d_model / n_heads = ",
                    d_.D, " must be a multiple of 8 and at most 128");
  if (plan_only) {  // sizes only: no device, no vendor handles (planned_device_bytes)
    DeviceArena sizing;
    plan(sizing);
    planned_bytes_ = sizing.used();
    return;
  }
  if (opt_.matmul == "cublas") cublas_ = std::make_unique<cuda::CublasLt>();
  if (opt_.attention == "cudnn") cudnn_ = std::make_unique<cuda::CudnnAttention>();
  KUMIKO_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));

  DeviceArena sizing;
  plan(sizing);
  planned_bytes_ = sizing.used();
  arena_ = std::make_unique<DeviceArena>(sizing.used(), "model (parameters, optimizer state and activations)");
  plan(*arena_);
  KUMIKO_CUDA_CHECK(cudaMemsetAsync(m_, 0, P_ * sizeof(float), stream_));
  KUMIKO_CUDA_CHECK(cudaMemsetAsync(v_, 0, P_ * sizeof(float), stream_));
  KUMIKO_CUDA_CHECK(cudaMemsetAsync(grads_, 0, P_ * sizeof(float), stream_));
  // The AdamW descriptor list (device pointers into the arena) is uploaded once.
  adamw_host_.clear();
  for (size_t i = 0; i < specs_.size(); ++i) {
    cuda::AdamWTensor t;
    t.param = master_ + offsets_[i];
    if constexpr (kBf16) t.param_bf16 = work_ + offsets_[i];
    t.grad = grads_ + offsets_[i];
    t.m = m_ + offsets_[i];
    t.v = v_ + offsets_[i];
    t.n = numel_of(specs_[i].shape);
    t.weight_decay = specs_[i].decay ? 1.0f : 0.0f;  // scaled by the run's weight_decay in adamw()
    adamw_max_n_ = std::max(adamw_max_n_, t.n);
    adamw_host_.push_back(t);
  }
  KUMIKO_CUDA_CHECK(cudaMemcpyAsync(adamw_list_, adamw_host_.data(), adamw_host_.size() * sizeof(cuda::AdamWTensor),
                                    cudaMemcpyHostToDevice, stream_));
  // Inputs, targets and the embedding groups (2 + 3N) of one micro-batch.
  host_ids_ = std::make_unique<Pinned<int32_t>>(static_cast<size_t>(2 + 5 * batch_ * seq_len_));
  host_losses_ = std::make_unique<Pinned<float>>(static_cast<size_t>(batch_ * seq_len_));
  host_norm_ = std::make_unique<Pinned<double>>(1);
  KUMIKO_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

template <typename T>
Model<T>::~Model() {
  for (auto e : bucket_events_) cudaEventDestroy(e);
  if (stream_) cudaStreamDestroy(stream_);
}

template <typename T>
void Model<T>::plan(DeviceArena& a) {
  const int64_t N = batch_ * seq_len_, C = d_.C, F = d_.F, QKV = d_.qkv_width(), A = d_.Hq * d_.D, V = d_.V;
  master_ = a.take<float>(P_);
  grads_ = a.take<float>(P_);
  m_ = a.take<float>(P_);
  v_ = a.take<float>(P_);
  if constexpr (kBf16)
    work_ = a.take<T>(P_);
  else
    work_ = master_;
  adamw_list_ = a.take<cuda::AdamWTensor>(static_cast<int64_t>(specs_.size()));
  layers_.assign(d_.L, Layer{});
  for (auto& l : layers_) {
    l.res = a.take<T>(N * C);
    l.mid = a.take<T>(N * C);
    l.ln1 = a.take<T>(N * C);
    l.ln2 = a.take<T>(N * C);
    l.qkv = a.take<T>(N * QKV);
    l.att = a.take<T>(N * A);
    l.h1 = a.take<T>(N * F);
    if (d_.llama) l.h2 = a.take<T>(N * F);
    l.hact = a.take<T>(N * F);
    l.mean1 = a.take<float>(N);
    l.rstd1 = a.take<float>(N);
    l.mean2 = a.take<float>(N);
    l.rstd2 = a.take<float>(N);
    l.lse = a.take<float>(N * d_.Hq);
  }
  resL_ = a.take<T>(N * C);
  lnf_ = a.take<T>(N * C);
  meanf_ = a.take<float>(N);
  rstdf_ = a.take<float>(N);
  logits_ = a.take<T>(N * V);
  losses_ = a.take<float>(N);
  dres_ = a.take<T>(N * C);
  dln_ = a.take<T>(N * C);
  datt_ = a.take<T>(N * A);
  dqkv_ = a.take<T>(N * QKV);
  dact_ = a.take<T>(N * F);
  dh1_ = a.take<T>(N * F);
  dh2_ = d_.llama ? a.take<T>(N * F) : nullptr;
  ids_ = a.take<int32_t>(N);
  targets_ = a.take<int32_t>(N);
  groups_ = a.take<int32_t>(2 + 3 * N);  // embedding_groups: 2 + 2U + N ints, U <= N distinct tokens
  norm_out_ = a.take<double>(1);
  // One workspace for every kernel that needs scratch (they run one at a time).
  size_t ws = 0;
  ws = std::max(ws, cuda::layernorm_backward_workspace_bytes(N, C));
  ws = std::max(ws, cuda::rmsnorm_backward_workspace_bytes(N, C));
  for (int64_t cols : {C, QKV, F}) ws = std::max(ws, cuda::bias_backward_workspace_bytes(N, cols));
  ws = std::max(ws, cuda::attention_backward_workspace_bytes(batch_, seq_len_, d_.Hq, d_.Hkv, d_.D));
  ws = std::max(ws, cuda::sum_squares_workspace_bytes(P_));
  if (cudnn_) ws = std::max(ws, cudnn_->workspace_bytes(batch_, seq_len_, d_.Hq, d_.Hkv, d_.D));
  workspace_ = a.take_bytes(ws);
}

template <typename T>
void Model<T>::set_parameters(const float* values) {
  KUMIKO_CUDA_CHECK(cudaMemcpyAsync(master_, values, P_ * sizeof(float), cudaMemcpyHostToDevice, stream_));
  if constexpr (kBf16) cuda::cast(work_, master_, P_, stream_);
  KUMIKO_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

template <typename T>
void Model<T>::set_moments(const float* m, const float* v) {
  KUMIKO_CUDA_CHECK(cudaMemcpyAsync(m_, m, P_ * sizeof(float), cudaMemcpyHostToDevice, stream_));
  KUMIKO_CUDA_CHECK(cudaMemcpyAsync(v_, v, P_ * sizeof(float), cudaMemcpyHostToDevice, stream_));
  KUMIKO_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

template <typename T>
void Model<T>::download(const float* src, float* dst, int64_t n) {
  KUMIKO_CUDA_CHECK(cudaMemcpyAsync(dst, src, n * sizeof(float), cudaMemcpyDeviceToHost, stream_));
  KUMIKO_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

template <typename T>
template <typename Tin, typename Tout>
void Model<T>::mm(const GemmArgs& g, const Tin* A, const Tin* Bm, Tout* C, const Tin* bias, Tout* pre) {
  if (cublas_)
    cublas_->gemm<Tin, Tout>(g, A, Bm, C, bias, pre, stream_);
  else
    cuda::gemm<Tin, Tout>(g, A, Bm, C, bias, pre, stream_);
}

template <typename T>
void Model<T>::linear(T* y, const T* x, int w, int b, int64_t N, int64_t in, int64_t out, T* gelu_pre) {
  GemmArgs g;
  g.layout = Layout::NT;
  g.M = N;
  g.N = out;
  g.K = in;
  g.epilogue = gelu_pre ? Epilogue::bias_gelu : (b >= 0 ? Epilogue::bias : Epilogue::none);
  KUMIKO_CHECK(!gelu_pre || b >= 0, "GELU epilogue without a bias");
  mm<T, T>(g, x, W(w), y, Wmaybe(b), gelu_pre);
}

template <typename T>
void Model<T>::linear_backward(T* dx, bool accumulate_dx, int w, int b, const T* dy, const T* x, int64_t N,
                               int64_t in, int64_t out) {
  if (dx) {
    GemmArgs g;
    g.layout = Layout::NN;
    g.M = N;
    g.N = in;
    g.K = out;
    g.accumulate = accumulate_dx;
    mm<T, T>(g, dy, W(w), dx, nullptr, nullptr);
  }
  GemmArgs g;
  g.layout = Layout::TN;
  g.M = out;
  g.N = in;
  g.K = N;
  g.accumulate = true;
  mm<T, float>(g, dy, x, G(w), nullptr, nullptr);
  if (b >= 0) cuda::bias_backward(G(b), dy, N, out, workspace_, stream_);
}

template <typename T>
void Model<T>::norm_forward(T* out, float* mean, float* rstd, const T* x, int w, int b, int64_t N) {
  if (d_.llama)
    cuda::rmsnorm_forward(out, rstd, x, W(w), N, d_.C, static_cast<float>(d_.eps), stream_);
  else
    cuda::layernorm_forward(out, mean, rstd, x, W(w), W(b), N, d_.C, static_cast<float>(d_.eps), stream_);
}

template <typename T>
void Model<T>::norm_backward(T* dx, int w, int b, const T* dout, const T* x, const float* mean, const float* rstd,
                             int64_t N) {
  if (d_.llama)
    cuda::rmsnorm_backward(dx, G(w), dout, x, W(w), rstd, N, d_.C, workspace_, stream_);
  else
    cuda::layernorm_backward(dx, G(w), G(b), dout, x, W(w), mean, rstd, N, d_.C, workspace_, stream_);
}

template <typename T>
void Model<T>::upload_batch(const int32_t* inputs, const int32_t* targets, int64_t B, int64_t Tn, bool groups) {
  // Workspaces (cuDNN's graphs in particular) are sized for [batch, seq_len].
  KUMIKO_CHECK(B <= batch_ && Tn <= seq_len_, "micro-batch [", B, ", ", Tn, "] exceeds the planned [", batch_, ", ",
               seq_len_, "]");
  const int64_t N = B * Tn;
  for (int64_t i = 0; i < N; ++i)
    KUMIKO_USER_CHECK(inputs[i] >= 0 && inputs[i] < d_.V && targets[i] >= 0 && targets[i] < d_.V,
                      "token id ", inputs[i] < 0 || inputs[i] >= d_.V ? inputs[i] : targets[i],
                      " at position ", i, " is outside the vocabulary [0, ", d_.V, ") of model.vocab_size");
  // The previous micro-batch synchronized at its end: the pinned buffer is free.
  int32_t* h = host_ids_->get();
  std::memcpy(h, inputs, N * sizeof(int32_t));
  std::memcpy(h + N, targets, N * sizeof(int32_t));
  KUMIKO_CUDA_CHECK(cudaMemcpyAsync(ids_, h, N * sizeof(int32_t), cudaMemcpyHostToDevice, stream_));
  KUMIKO_CUDA_CHECK(cudaMemcpyAsync(targets_, h + N, N * sizeof(int32_t), cudaMemcpyHostToDevice, stream_));
  if (groups) {
    const auto g = cuda::embedding_groups(inputs, N);
    KUMIKO_CHECK(static_cast<int64_t>(g.size()) <= 2 + 3 * N, "embedding groups larger than planned");
    std::memcpy(h + 2 * N, g.data(), g.size() * sizeof(int32_t));
    KUMIKO_CUDA_CHECK(
        cudaMemcpyAsync(groups_, h + 2 * N, g.size() * sizeof(int32_t), cudaMemcpyHostToDevice, stream_));
  }
}

template <typename T>
void Model<T>::forward(int64_t B, int64_t Tn) {
  const int64_t N = B * Tn, C = d_.C, F = d_.F, QKV = d_.qkv_width(), A = d_.Hq * d_.D;
  KUMIKO_CHECK(d_.llama || Tn <= d_.max_T, "sequence of ", Tn, " tokens > model.max_seq_len ", d_.max_T);
  cuda::embedding_forward(layers_[0].res, ids_, W(tokens_), Wmaybe(positions_), N, Tn, C, stream_);
  for (int64_t l = 0; l < d_.L; ++l) {
    const model::BlockIndex& b = block_index_[l];
    Layer& a = layers_[l];
    T* out = l + 1 < d_.L ? layers_[l + 1].res : resL_;
    norm_forward(a.ln1, a.mean1, a.rstd1, a.res, b.norm1_w, b.norm1_b, N);
    linear(a.qkv, a.ln1, b.qkv_w, b.qkv_b, N, C, QKV);
    if (d_.llama) cuda::rope_forward(a.qkv, B, Tn, d_.Hq, d_.Hkv, d_.D, d_.rope_theta, stream_);
    if constexpr (kBf16) {
      if (cudnn_) {
        cudnn_->forward(a.att, a.lse, a.qkv, B, Tn, d_.Hq, d_.Hkv, d_.D, workspace_, stream_);
      } else {
        cuda::attention_forward(a.att, a.lse, a.qkv, B, Tn, d_.Hq, d_.Hkv, d_.D, stream_);
      }
    } else {
      cuda::attention_forward(a.att, a.lse, a.qkv, B, Tn, d_.Hq, d_.Hkv, d_.D, stream_);
    }
    linear(a.mid, a.att, b.proj_w, b.proj_b, N, A, C);
    cuda::add_inplace(a.mid, a.res, N * C, stream_);
    norm_forward(a.ln2, a.mean2, a.rstd2, a.mid, b.norm2_w, b.norm2_b, N);
    if (d_.llama) {
      linear(a.h1, a.ln2, b.gate_w, -1, N, C, F);
      linear(a.h2, a.ln2, b.up_w, -1, N, C, F);
      cuda::swiglu_forward(a.hact, a.h1, a.h2, N * F, stream_);
      linear(out, a.hact, b.down_w, -1, N, F, C);
    } else {
      linear(a.hact, a.ln2, b.fc_w, b.fc_b, N, C, F, /*gelu_pre=*/a.h1);
      linear(out, a.hact, b.mproj_w, b.mproj_b, N, F, C);
    }
    cuda::add_inplace(out, a.mid, N * C, stream_);
  }
  norm_forward(lnf_, meanf_, rstdf_, resL_, normf_w_, normf_b_, N);
  linear(logits_, lnf_, head_, -1, N, C, d_.V);
}

template <typename T>
void Model<T>::cross_entropy(int64_t N, bool backward, float loss_scale) {
  cuda::cross_entropy(losses_, logits_, targets_, N, d_.V, backward, loss_scale, stream_);
  KUMIKO_CUDA_CHECK(
      cudaMemcpyAsync(host_losses_->get(), losses_, N * sizeof(float), cudaMemcpyDeviceToHost, stream_));
}

template <typename T>
double Model<T>::host_mean_loss(int64_t N) {
  KUMIKO_CUDA_CHECK(cudaStreamSynchronize(stream_));
  double sum = 0;
  for (int64_t i = 0; i < N; ++i) sum += host_losses_->get()[i];
  return sum / static_cast<double>(N);
}

template <typename T>
void Model<T>::backward(int64_t B, int64_t Tn, bool last_micro_batch) {
  const int64_t N = B * Tn, C = d_.C, F = d_.F, QKV = d_.qkv_width(), A = d_.Hq * d_.D;
  armed_ = last_micro_batch && nccl_ != nullptr;
  // Head: logits_ holds dlogits here.
  linear_backward(dln_, false, head_, -1, logits_, lnf_, N, C, d_.V);
  KUMIKO_CUDA_CHECK(cudaMemsetAsync(dres_, 0, N * C * sizeof(T), stream_));
  norm_backward(dres_, normf_w_, normf_b_, dln_, resL_, meanf_, rstdf_, N);
  grads_ready(0);
  for (int64_t l = d_.L - 1; l >= 0; --l) {
    const model::BlockIndex& b = block_index_[l];
    Layer& a = layers_[l];
    // dres: the gradient w.r.t. the block output = w.r.t. mid + the MLP output.
    if (d_.llama) {
      linear_backward(dact_, false, b.down_w, -1, dres_, a.hact, N, F, C);
      cuda::swiglu_backward(dh1_, dh2_, dact_, a.h1, a.h2, N * F, /*overwrite=*/true, stream_);
      linear_backward(dln_, false, b.gate_w, -1, dh1_, a.ln2, N, C, F);
      linear_backward(dln_, true, b.up_w, -1, dh2_, a.ln2, N, C, F);
    } else {
      linear_backward(dact_, false, b.mproj_w, b.mproj_b, dres_, a.hact, N, F, C);
      cuda::gelu_backward(dh1_, dact_, a.h1, N * F, /*overwrite=*/true, stream_);
      linear_backward(dln_, false, b.fc_w, b.fc_b, dh1_, a.ln2, N, C, F);
    }
    norm_backward(dres_, b.norm2_w, b.norm2_b, dln_, a.mid, a.mean2, a.rstd2, N);
    // dres: the gradient w.r.t. mid = x + proj(att).
    linear_backward(datt_, false, b.proj_w, b.proj_b, dres_, a.att, N, A, C);
    if constexpr (kBf16) {
      if (cudnn_)
        cudnn_->backward(dqkv_, datt_, a.qkv, a.att, a.lse, B, Tn, d_.Hq, d_.Hkv, d_.D, workspace_, stream_);
      else
        cuda::attention_backward(dqkv_, datt_, a.qkv, a.att, a.lse, B, Tn, d_.Hq, d_.Hkv, d_.D, workspace_,
                                 stream_);
    } else {
      cuda::attention_backward(dqkv_, datt_, a.qkv, a.att, a.lse, B, Tn, d_.Hq, d_.Hkv, d_.D, workspace_,
                               stream_);
    }
    if (d_.llama) cuda::rope_backward(dqkv_, B, Tn, d_.Hq, d_.Hkv, d_.D, d_.rope_theta, stream_);
    linear_backward(dln_, false, b.qkv_w, b.qkv_b, dqkv_, a.ln1, N, C, QKV);
    norm_backward(dres_, b.norm1_w, b.norm1_b, dln_, a.res, a.mean1, a.rstd1, N);
    grads_ready(static_cast<int>(d_.L - l));
  }
  // Embeddings: dres is the gradient w.r.t. the embedded input.
  if (positions_ >= 0) cuda::add_positions_backward(G(positions_), dres_, B, Tn, C, stream_);
  cuda::embedding_backward(G(tokens_), dres_, groups_, std::min(N, d_.V), C, stream_);
  grads_ready(static_cast<int>(d_.L + 1));
}

template <typename T>
double Model<T>::forward_backward(const int32_t* inputs, const int32_t* targets, int64_t B, int64_t Tn,
                                  float loss_scale, bool last_micro_batch) {
  const int64_t N = B * Tn;
  upload_batch(inputs, targets, B, Tn, /*groups=*/true);
  forward(B, Tn);
  cross_entropy(N, /*backward=*/true, loss_scale);
  backward(B, Tn, last_micro_batch);
  return host_mean_loss(N);
}

template <typename T>
double Model<T>::loss(const int32_t* inputs, const int32_t* targets, int64_t B, int64_t Tn) {
  const int64_t N = B * Tn;
  upload_batch(inputs, targets, B, Tn, /*groups=*/false);
  forward(B, Tn);
  cross_entropy(N, /*backward=*/false, 1.0f);
  return host_mean_loss(N);
}

template <typename T>
void Model<T>::enable_data_parallel(comm::Communicator* nccl, int64_t bucket_bytes) {
  nccl_ = nccl;
  if (!nccl_ || nccl_->size() == 1) {
    nccl_ = nullptr;
    return;
  }
  nccl_stream_ = static_cast<cudaStream_t>(comm::nccl_stream(*nccl_));
  buckets_.clear();
  for (const auto& g : gradient_buckets(units_, bucket_bytes)) buckets_.push_back(Bucket{g, nullptr});
  for (auto e : bucket_events_) cudaEventDestroy(e);
  bucket_events_.assign(buckets_.size(), nullptr);
  for (auto& e : bucket_events_) KUMIKO_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
}

template <typename T>
void Model<T>::grads_ready(int unit) {
  if (!armed_) return;
  for (size_t i = 0; i < buckets_.size(); ++i) {
    Bucket& b = buckets_[i];
    if (b.last_unit != unit || b.request) continue;
    // NCCL's stream waits for the gradient kernels queued so far, then reduces.
    KUMIKO_CUDA_CHECK(cudaEventRecord(bucket_events_[i], stream_));
    KUMIKO_CUDA_CHECK(cudaStreamWaitEvent(nccl_stream_, bucket_events_[i], 0));
    b.request = nccl_->iall_reduce(grads_ + b.begin, b.end - b.begin, comm::ReduceOp::sum);
  }
}

template <typename T>
double Model<T>::finish_reduction() {
  if (!nccl_) return 0;
  const auto t0 = std::chrono::steady_clock::now();
  for (size_t i = 0; i < buckets_.size(); ++i) {
    Bucket& b = buckets_[i];
    if (!b.request) {  // armed too late (e.g. a step with no backward): reduce now
      KUMIKO_CUDA_CHECK(cudaEventRecord(bucket_events_[i], stream_));
      KUMIKO_CUDA_CHECK(cudaStreamWaitEvent(nccl_stream_, bucket_events_[i], 0));
      b.request = nccl_->iall_reduce(grads_ + b.begin, b.end - b.begin, comm::ReduceOp::sum);
    }
  }
  for (auto& b : buckets_) {
    b.request->wait();
    b.request.reset();
  }
  armed_ = false;
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

template <typename T>
double Model<T>::grad_norm() {
  cuda::sum_squares(norm_out_, grads_, P_, workspace_, stream_);
  KUMIKO_CUDA_CHECK(cudaMemcpyAsync(host_norm_->get(), norm_out_, sizeof(double), cudaMemcpyDeviceToHost, stream_));
  KUMIKO_CUDA_CHECK(cudaStreamSynchronize(stream_));
  return std::sqrt(*host_norm_->get());
}

template <typename T>
void Model<T>::adamw(const AdamWHyper& h, double grad_scale, int64_t step) {
  // Weight decay per tensor: the descriptors hold 1 or 0, scaled here (kept in
  // host memory, re-uploaded only when the run's value changes).
  static_assert(sizeof(cuda::AdamWTensor) % 8 == 0);
  const float wd = static_cast<float>(h.weight_decay);
  bool changed = false;
  for (size_t i = 0; i < adamw_host_.size(); ++i) {
    const float want = specs_[i].decay ? wd : 0.0f;
    if (adamw_host_[i].weight_decay != want) {
      adamw_host_[i].weight_decay = want;
      changed = true;
    }
  }
  if (changed)
    KUMIKO_CUDA_CHECK(cudaMemcpyAsync(adamw_list_, adamw_host_.data(),
                                      adamw_host_.size() * sizeof(cuda::AdamWTensor), cudaMemcpyHostToDevice,
                                      stream_));
  cuda::AdamWStep s;
  s.lr = static_cast<float>(h.lr);
  s.beta1 = static_cast<float>(h.beta1);
  s.beta2 = static_cast<float>(h.beta2);
  s.eps = static_cast<float>(h.eps);
  s.grad_scale = static_cast<float>(grad_scale);
  s.bias_correction1 = static_cast<float>(1.0 - std::pow(h.beta1, static_cast<double>(step)));
  s.bias_correction2 = static_cast<float>(1.0 - std::pow(h.beta2, static_cast<double>(step)));
  cuda::adamw_multi_tensor(adamw_list_, static_cast<int>(adamw_host_.size()), adamw_max_n_, s, stream_);
  // The step ends on the host too: the trainer times steps and may read the weights next.
  // (The descriptor copy above reads pageable memory: it is staged before it returns.)
  KUMIKO_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

template <typename T>
void Model<T>::poison_gradient() {
  const float nan = std::nanf("");
  KUMIKO_CUDA_CHECK(cudaMemcpyAsync(grads_, &nan, sizeof(float), cudaMemcpyHostToDevice, stream_));
  KUMIKO_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

template <typename T>
std::string Model<T>::describe() const {
  int dev = 0;
  cudaGetDevice(&dev);
  return detail::concat(cuda::device_description(dev), ", dtype ", kBf16 ? "bf16" : "fp32", ", matmul ",
                        opt_.matmul, ", attention ", opt_.attention, ", arena ", arena_->capacity() / 1048576.0,
                        " MiB");
}

std::unique_ptr<GpuModel> make_gpu_model(const model::Dims& dims, int64_t batch, int64_t seq_len,
                                         const GpuOptions& options) {
  const int n = cuda::require_devices("backend.device = cuda", "; check nvidia-smi, or use backend.device = cpu");
  KUMIKO_CUDA_CHECK(cudaSetDevice(comm::local_rank_from_launcher() % n));
  KUMIKO_USER_CHECK(options.dtype == "fp32" || options.dtype == "bf16", "backend.dtype: '", options.dtype,
                    "' (expected fp32 or bf16)");
  if (options.dtype == "bf16") return std::make_unique<Model<bf16>>(dims, batch, seq_len, options);
  return std::make_unique<Model<float>>(dims, batch, seq_len, options);
}

size_t planned_device_bytes(const model::Dims& dims, int64_t batch, int64_t seq_len, const GpuOptions& options) {
  if (options.dtype == "bf16") return Model<bf16>(dims, batch, seq_len, options, true).planned_bytes();
  return Model<float>(dims, batch, seq_len, options, true).planned_bytes();
}

bool cuda_built() { return true; }

int visible_devices() { return cuda::device_count(); }

}  // namespace kumiko::gpu
