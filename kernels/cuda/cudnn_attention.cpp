// cuDNN fused causal attention through the cudnn_frontend graph API (graph.sdpa and
// graph.sdpa_backward), bf16 in and out, fp32 softmax and accumulation.
//
// No copies: Q, K, V, dQ, dK, dV are described as [B, H, T, D] tensors whose strides walk
// the packed qkv [B, T, (Hq + 2*Hkv) * D] rows in place (row stride W = (Hq + 2*Hkv) * D,
// head stride D; K starts at column Hq*D, V at (Hq + Hkv)*D); out and dout [B, T, Hq*D]
// likewise. K/V (and dK/dV) have Hkv heads: cuDNN maps query head h to kv head
// h / (Hq / Hkv), kumiko's GQA convention. Graphs are built once per shape and direction
// and cached (building is slow, executing is cheap). One instance must not be used from
// several threads at once (one handle, one cache).
//
// Stats: with generate_stats, cuDNN writes max + ln(sum exp) of each row of the scaled,
// masked scores (natural log; set_stats_use_log2 is left off), fp32 [B, Hq, T, 1]. That is
// kumiko's lse exactly, so forward writes it to lse as is and backward reads it back as is.
#include "kernels/cuda/cudnn_attention.cuh"

#include <cudnn.h>
#include <cudnn_frontend.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "kumiko/core/error.h"

namespace kumiko::cuda {

namespace fe = cudnn_frontend;

namespace {

// Tensor ids inside the graphs (the variant pack maps them to device pointers).
enum Uid : int64_t { kQ = 1, kK, kV, kO, kStats, kDO, kDQ, kDK, kDV, kScale };

struct Shape {
  int64_t B, T, Hq, Hkv, D;
  int64_t W() const { return (Hq + 2 * Hkv) * D; }  // qkv row stride
  std::vector<int64_t> qkv_dim(int64_t H) const { return {B, H, T, D}; }
  std::vector<int64_t> qkv_stride() const { return {T * W(), D, W(), 1}; }
  std::vector<int64_t> out_stride() const { return {T * Hq * D, D, Hq * D, 1}; }
  float scale() const { return float(1.0 / std::sqrt(double(D))); }
};

std::string describe(const Shape& s) {
  return detail::concat("B=", s.B, " T=", s.T, " Hq=", s.Hq, " Hkv=", s.Hkv, " D=", s.D);
}

void check_fe(const fe::error_t& e, const char* what, const Shape& s, bool forward) {
  if (e.is_good()) return;
  throw Error(detail::concat("cuDNN attention ", forward ? "forward" : "backward", " (",
                             describe(s), "): ", what, " failed: ", e.code, ": ", e.err_msg));
}

void check_cudnn(cudnnStatus_t status, const char* what) {
  if (status == CUDNN_STATUS_SUCCESS) return;
  throw Error(detail::concat("cuDNN error in ", what, ": ", cudnnGetErrorString(status)));
}

std::shared_ptr<fe::graph::Tensor_attributes> input(fe::graph::Graph& g, const char* name, Uid uid,
                                                    std::vector<int64_t> dim,
                                                    std::vector<int64_t> stride) {
  return g.tensor(fe::graph::Tensor_attributes()
                      .set_name(name)
                      .set_uid(uid)
                      .set_dim(std::move(dim))
                      .set_stride(std::move(stride)));
}

// attn_scale is a host scalar passed by value at execution.
std::shared_ptr<fe::graph::Tensor_attributes> scale_input(fe::graph::Graph& g) {
  return g.tensor(fe::graph::Tensor_attributes()
                      .set_name("attn_scale")
                      .set_uid(kScale)
                      .set_dim({1, 1, 1, 1})
                      .set_stride({1, 1, 1, 1})
                      .set_is_pass_by_value(true)
                      .set_data_type(fe::DataType_t::FLOAT));
}

std::vector<int64_t> stats_dim(const Shape& s) { return {s.B, s.Hq, s.T, 1}; }
std::vector<int64_t> stats_stride(const Shape& s) { return {s.Hq * s.T, s.T, 1, 1}; }

void build_forward(fe::graph::Graph& g, const Shape& s) {
  auto q = input(g, "Q", kQ, s.qkv_dim(s.Hq), s.qkv_stride());
  auto k = input(g, "K", kK, s.qkv_dim(s.Hkv), s.qkv_stride());
  auto v = input(g, "V", kV, s.qkv_dim(s.Hkv), s.qkv_stride());
  auto options = fe::graph::SDPA_attributes()
                     .set_name("sdpa")
                     .set_generate_stats(true)
                     .set_causal_mask(true)
                     .set_attn_scale(scale_input(g));
  auto [o, stats] = g.sdpa(q, k, v, options);
  o->set_output(true).set_uid(kO).set_dim(s.qkv_dim(s.Hq)).set_stride(s.out_stride());
  stats->set_output(true)
      .set_uid(kStats)
      .set_data_type(fe::DataType_t::FLOAT)
      .set_dim(stats_dim(s))
      .set_stride(stats_stride(s));
}

void build_backward(fe::graph::Graph& g, const Shape& s) {
  auto q = input(g, "Q", kQ, s.qkv_dim(s.Hq), s.qkv_stride());
  auto k = input(g, "K", kK, s.qkv_dim(s.Hkv), s.qkv_stride());
  auto v = input(g, "V", kV, s.qkv_dim(s.Hkv), s.qkv_stride());
  auto o = input(g, "O", kO, s.qkv_dim(s.Hq), s.out_stride());
  auto d_o = input(g, "dO", kDO, s.qkv_dim(s.Hq), s.out_stride());
  auto stats = g.tensor(fe::graph::Tensor_attributes()
                            .set_name("Stats")
                            .set_uid(kStats)
                            .set_dim(stats_dim(s))
                            .set_stride(stats_stride(s))
                            .set_data_type(fe::DataType_t::FLOAT));
  auto options = fe::graph::SDPA_backward_attributes()
                     .set_name("sdpa_backward")
                     .set_causal_mask(true)
                     .set_attn_scale(scale_input(g))
                     .set_deterministic_algorithm(true);
  auto [dq, dk, dv] = g.sdpa_backward(q, k, v, o, d_o, stats, options);
  dq->set_output(true).set_uid(kDQ).set_dim(s.qkv_dim(s.Hq)).set_stride(s.qkv_stride());
  dk->set_output(true).set_uid(kDK).set_dim(s.qkv_dim(s.Hkv)).set_stride(s.qkv_stride());
  dv->set_output(true).set_uid(kDV).set_dim(s.qkv_dim(s.Hkv)).set_stride(s.qkv_stride());
}

}  // namespace

struct CudnnAttention::Impl {
  using Key =
      std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t, bool>;  // B, T, Hq, Hkv, D, forward

  cudnnHandle_t handle = nullptr;
  std::map<Key, std::shared_ptr<fe::graph::Graph>> graphs;

  // The cached graph for this shape and direction, built on first use.
  fe::graph::Graph& graph(const Shape& s, bool forward) {
    const Key key{s.B, s.T, s.Hq, s.Hkv, s.D, forward};
    if (auto it = graphs.find(key); it != graphs.end()) return *it->second;
    auto g = std::make_shared<fe::graph::Graph>();
    g->set_io_data_type(fe::DataType_t::BFLOAT16)
        .set_intermediate_data_type(fe::DataType_t::FLOAT)
        .set_compute_data_type(fe::DataType_t::FLOAT);
    if (forward)
      build_forward(*g, s);
    else
      build_backward(*g, s);
    check_fe(g->validate(), "validate", s, forward);
    check_fe(g->build_operation_graph(handle), "build_operation_graph", s, forward);
    check_fe(g->create_execution_plans({fe::HeurMode_t::A}), "create_execution_plans", s, forward);
    check_fe(g->check_support(), "check_support (shape not supported by this cuDNN)", s, forward);
    check_fe(g->build_plans(), "build_plans", s, forward);
    return *graphs.emplace(key, std::move(g)).first->second;
  }

  size_t workspace(const Shape& s, bool forward) {
    int64_t bytes = 0;
    check_fe(graph(s, forward).get_workspace_size(bytes), "get_workspace_size", s, forward);
    return size_t(bytes);
  }

  void execute(const Shape& s, bool forward, std::unordered_map<int64_t, void*>& pack,
               void* workspace, cudaStream_t stream) {
    fe::graph::Graph& g = graph(s, forward);
    check_cudnn(cudnnSetStream(handle, stream), "cudnnSetStream");
    check_fe(g.execute(handle, pack, workspace), "execute", s, forward);
  }
};

namespace {

Shape make_shape(int64_t B, int64_t T_, int64_t Hq, int64_t Hkv, int64_t D) {
  KUMIKO_CHECK(B >= 0 && T_ >= 0 && D > 0, "cuDNN attention: bad sizes B=", B, " T=", T_, " D=", D);
  KUMIKO_CHECK(Hq > 0 && Hkv > 0 && Hq % Hkv == 0, "cuDNN attention: Hq=", Hq,
               " is not a multiple of Hkv=", Hkv);
  return {B, T_, Hq, Hkv, D};
}

}  // namespace

CudnnAttention::CudnnAttention() : impl_(std::make_unique<Impl>()) {
  check_cudnn(cudnnCreate(&impl_->handle), "cudnnCreate");
}

CudnnAttention::~CudnnAttention() {
  impl_->graphs.clear();  // the plans go before the handle they were built with
  if (impl_->handle) cudnnDestroy(impl_->handle);
}

size_t CudnnAttention::workspace_bytes(int64_t B, int64_t T_, int64_t Hq, int64_t Hkv, int64_t D) {
  const Shape s = make_shape(B, T_, Hq, Hkv, D);
  if (B == 0 || T_ == 0) return 0;
  return std::max(impl_->workspace(s, true), impl_->workspace(s, false));
}

void CudnnAttention::forward(bf16* out, float* lse, const bf16* qkv, int64_t B, int64_t T_,
                             int64_t Hq, int64_t Hkv, int64_t D, void* workspace,
                             cudaStream_t stream) {
  const Shape s = make_shape(B, T_, Hq, Hkv, D);
  if (B == 0 || T_ == 0) return;
  bf16* in = const_cast<bf16*>(qkv);  // the variant pack takes void*; cuDNN only reads inputs
  float scale = s.scale();
  std::unordered_map<int64_t, void*> pack = {
      {kQ, in},  {kK, in + Hq * D}, {kV, in + (Hq + Hkv) * D},
      {kO, out}, {kStats, lse},     {kScale, &scale}};
  impl_->execute(s, true, pack, workspace, stream);
}

void CudnnAttention::backward(bf16* dqkv, const bf16* dout, const bf16* qkv, const bf16* out,
                              const float* lse, int64_t B, int64_t T_, int64_t Hq, int64_t Hkv,
                              int64_t D, void* workspace, cudaStream_t stream) {
  const Shape s = make_shape(B, T_, Hq, Hkv, D);
  if (B == 0 || T_ == 0) return;
  bf16* in = const_cast<bf16*>(qkv);
  float scale = s.scale();
  std::unordered_map<int64_t, void*> pack = {{kQ, in},
                                             {kK, in + Hq * D},
                                             {kV, in + (Hq + Hkv) * D},
                                             {kO, const_cast<bf16*>(out)},
                                             {kDO, const_cast<bf16*>(dout)},
                                             {kStats, const_cast<float*>(lse)},
                                             {kDQ, dqkv},
                                             {kDK, dqkv + Hq * D},
                                             {kDV, dqkv + (Hq + Hkv) * D},
                                             {kScale, &scale}};
  impl_->execute(s, false, pack, workspace, stream);
}

}  // namespace kumiko::cuda
