#pragma once
// What the two host backends, Cpu<T> (float, double) and CpuBf16 (bf16 storage), share:
// host memory moves, the collectives, and the layers' ops whose kernels/cpu kernels are
// instantiated on every host storage type (they compute in math_t<Act> = fp32 for bf16
// and round once on store). Each backend adds what differs: its arena, the linears'
// GEMMs, the embedding, decoding, the loss and the optimizer.
#include <cstdint>
#include <cstring>
#include <memory>
#include <type_traits>
#include <vector>

#include "kumiko/comm/communicator.h"
#include "kumiko/ops/attention.h"
#include "kumiko/ops/elementwise.h"
#include "kumiko/ops/embedding.h"
#include "kumiko/ops/gelu.h"
#include "kumiko/ops/layernorm.h"
#include "kumiko/ops/linear.h"
#include "kumiko/ops/rmsnorm.h"
#include "kumiko/ops/rope.h"
#include "kumiko/ops/swiglu.h"

namespace kumiko::backend {

// Collectives of the host backends: run on the calling thread by the communicator
// (tensor parallelism, the pipeline, the data-parallel reduction).
struct HostCollectives {
  template <typename X>
  void all_reduce(comm::Communicator& g, X* x, int64_t n, comm::ReduceOp op) {
    g.all_reduce(x, n, op);
  }
  template <typename X>
  void all_gather(comm::Communicator& g, X* x, const std::vector<int64_t>& counts) {
    g.all_gather(x, counts);
  }
  template <typename X>
  void reduce_scatter(comm::Communicator& g, const X* send, X* recv, const std::vector<int64_t>& counts) {
    g.reduce_scatter(send, recv, counts, comm::ReduceOp::sum);
  }
  template <typename X>
  std::unique_ptr<comm::Request> iall_reduce(comm::Communicator& g, X* x, int64_t n) {
    return g.iall_reduce(x, n, comm::ReduceOp::sum);
  }
  template <typename X>
  std::unique_ptr<comm::Request> ireduce_scatter(comm::Communicator& g, const X* send, X* recv,
                                                 const std::vector<int64_t>& counts) {
    return g.ireduce_scatter(send, recv, counts, comm::ReduceOp::sum);
  }
  template <typename X>
  std::unique_ptr<comm::Request> iall_gather(comm::Communicator& g, X* x, const std::vector<int64_t>& counts) {
    return g.iall_gather(x, counts);
  }
  template <typename X>
  std::unique_ptr<comm::Request> isend(comm::Communicator& g, const X* x, int64_t n, int peer, int tag) {
    return g.isend(x, n, peer, tag);
  }
  template <typename X>
  void recv(comm::Communicator& g, X* x, int64_t n, int peer, int tag) {
    g.recv(x, n, peer, tag);
  }
};

// A: activations and working weights; G: gradients; S: norm statistics and lse.
template <typename A, typename G, typename S>
class HostOps : public HostCollectives {
 public:
  // ---- memory (the host is the backend: "to_host" copies between host buffers) ----
  template <typename X>
  void zero(X* x, int64_t n) {
    static_assert(std::is_trivially_copyable_v<X>);
    if (n > 0) std::memset(static_cast<void*>(x), 0, static_cast<size_t>(n) * sizeof(X));
  }
  template <typename X>
  void copy(X* dst, const X* src, int64_t n) {
    static_assert(std::is_trivially_copyable_v<X>);
    if (n > 0) std::memcpy(static_cast<void*>(dst), src, static_cast<size_t>(n) * sizeof(X));
  }
  template <typename X>
  void add_inplace(X* out, const X* a, int64_t n) {
    cpu::add_inplace(out, a, n);
  }
  template <typename X>
  void to_host(X* host, const X* x, int64_t n) {
    if (host != x) copy(host, x, n);
  }
  template <typename X>
  void from_host(X* x, const X* host, int64_t n) {
    if (host != x) copy(x, host, n);
  }
  // Token ids of a micro-batch where the kernels read them (host ids as they are).
  const int32_t* tokens(int32_t* /*slot*/, const int32_t* host, int64_t /*n*/) { return host; }
  void synchronize() {}

  // ---- layers' ops ----
  // out[rows, C] += b[C] per row; db[C] += column sums of dy[rows, C].
  void add_bias(A* out, const A* b, int64_t rows, int64_t C) {
    cpu::add_positions_forward(out, b, rows, int64_t{1}, C);
  }
  void bias_backward(G* db, const A* dy, int64_t rows, int64_t C) { cpu::bias_backward(db, dy, rows, C); }
  void gelu_forward(A* out, const A* pre, int64_t n) { cpu::gelu_forward(out, pre, n); }
  // dx = dy * gelu'(pre) (overwritten; dx may alias dy).
  void gelu_backward(A* dx, const A* dy, const A* pre, int64_t n) { cpu::gelu_backward(dx, dy, pre, n, true); }
  void swiglu_forward(A* out, const A* gate, const A* up, int64_t n) { cpu::swiglu_forward(out, gate, up, n); }
  // dgate, dup overwritten.
  void swiglu_backward(A* dgate, A* dup, const A* dy, const A* gate, const A* up, int64_t n) {
    cpu::swiglu_backward(dgate, dup, dy, gate, up, n, true);
  }
  // LayerNorm (gpt2; saves mean and rstd) or RMSNorm (llama; saves rstd).
  void norm_forward(bool rms, A* out, S* mean, S* rstd, const A* x, const A* w, const A* b, int64_t N, int64_t C,
                    double eps) {
    if (rms)
      cpu::rmsnorm_forward(out, rstd, x, w, N, C, static_cast<S>(eps));
    else
      cpu::layernorm_forward(out, mean, rstd, x, w, b, N, C, static_cast<S>(eps));
  }
  // dx += (accumulates: the residual stream's gradient; bf16: one rounding of dx + the
  // fp32 term), dw, db +=.
  void norm_backward(bool rms, A* dx, G* dw, G* db, const A* dy, const A* x, const A* w, const S* mean,
                     const S* rstd, int64_t N, int64_t C) {
    if (rms)
      cpu::rmsnorm_backward(dx, dw, dy, x, w, rstd, N, C);
    else
      cpu::layernorm_backward(dx, dw, db, dy, x, w, mean, rstd, N, C);
  }
  void rope_forward(A* qkv, int64_t B, int64_t Tn, int64_t Hq, int64_t Hkv, int64_t D, double theta) {
    cpu::rope_forward(qkv, B, Tn, Hq, Hkv, D, theta);
  }
  void rope_backward(A* dqkv, int64_t B, int64_t Tn, int64_t Hq, int64_t Hkv, int64_t D, double theta) {
    cpu::rope_backward(dqkv, B, Tn, Hq, Hkv, D, theta);
  }
  // bf16: every tile product on vdpbf16ps where the CPU has it, else widened fp32 tiles.
  void attention_forward(A* out, S* lse, const A* qkv, int64_t B, int64_t Tn, int64_t Hq, int64_t Hkv, int64_t D) {
    cpu::attention_forward(out, lse, qkv, B, Tn, Hq, Hkv, D);
  }
  // dqkv overwritten (bf16: summed in fp32, rounded once).
  void attention_backward(A* dqkv, const A* dy, const A* qkv, const A* out, const S* lse, int64_t B, int64_t Tn,
                          int64_t Hq, int64_t Hkv, int64_t D) {
    cpu::attention_backward(dqkv, dy, qkv, out, lse, B, Tn, Hq, Hkv, D, /*overwrite=*/true);
  }
  // x[rows, C] += pos[(first + i) % Tn] for row i; dpos[t] += the rows at position t.
  void add_positions(A* x, const A* pos, int64_t first, int64_t rows, int64_t Tn, int64_t C) {
    cpu::add_positions_range(x, pos, first, rows, Tn, C);
  }
  void positions_backward(G* dpos, const A* dx, int64_t B, int64_t Tn, int64_t C) {
    cpu::add_positions_backward(dpos, dx, B, Tn, C);
  }
};

}  // namespace kumiko::backend
