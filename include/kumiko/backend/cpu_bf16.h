#pragma once
// The CPU backend's bf16 precision (backend.device = cpu, backend.dtype = bf16): the
// mixed-precision contract of the CUDA backend's bf16 on host memory.
//   Act  = bf16   activations and the working copy of the weights the GEMMs read;
//   Grad = float  master weights, gradients, AdamW moments, gradient reductions;
//   Stat = float  norm statistics, log-sum-exp, losses.
// Every op reads its bf16 operands as fp32, computes in fp32 (GEMMs accumulate in fp32,
// softmax, norms' statistics and the loss stay fp32) and rounds what it stores as bf16
// once, to nearest even. Norms, GELU, SwiGLU, RoPE, biases, positions, residual adds,
// attention and the loss are kernels/cpu's kernels instantiated on bf16 storage (they
// convert inside their own loops or tiles); the linears' GEMMs store bf16, rounded once
// from their fp32 result (GELU then reads the stored pre-activation); the vocab-parallel loss
// (tp > 1) and decoding widen their operands into scratch. Weight gradients accumulate
// in fp32 straight into Grad. The GEMMs are cpu::matmul_bf16 (backend.bf16_gemm): bf16
// operands, fp32 accumulation and result, through OpenBLAS's sbgemm or oneDNN (AMX /
// AVX512-BF16 where the CPU has them), or "emulated": widened to fp32 and multiplied
// with OpenBLAS's sgemm, the reference the native ones must match, on any CPU.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "kumiko/backend/adamw.h"
#include "kumiko/backend/cpu.h"
#include "kumiko/backend/host_ops.h"
#include "kumiko/core/bf16.h"
#include "kumiko/core/cpu_features.h"
#include "kumiko/core/error.h"
#include "kumiko/ops/attention.h"
#include "kumiko/ops/bf16.h"
#include "kumiko/ops/cross_entropy.h"
#include "kumiko/ops/matmul_bf16.h"
#include "kumiko/ops/packed_weights.h"

namespace kumiko::backend {

class CpuBf16 : public HostOps<bf16, float, float> {
 public:
  using Act = bf16;
  using Grad = float;
  using Stat = float;
  static constexpr bool kHost = false;  // master weights, gradients and working copy in the arena
  static constexpr bool kLazyGradZero = true;  // as backend::Cpu
  static constexpr const char* kName = "cpu";

  // head_dim: the model's, for the start-up line's account of attention's tiles.
  // pack_weights: keep the linear weights packed for oneDNN between steps
  // (cpu::PackedWeights; only with gemm = onednn, where PackedWeights::supported()).
  // The engine asks for it unless backend.packed_weights = false; the working copy must
  // then change only through adamw() and refresh_work().
  explicit CpuBf16(cpu::Bf16Gemm gemm = cpu::Bf16Gemm::emulated, int64_t head_dim = 0, bool pack_weights = false)
      : gemm_(gemm), head_dim_(head_dim) {
    if (pack_weights && gemm == cpu::Bf16Gemm::onednn && cpu::PackedWeights::supported())
      packed_ = std::make_unique<cpu::PackedWeights>();
  }
  // Bytes of the packed weight copies held now (0 without them).
  size_t packed_weight_bytes() const { return packed_ ? packed_->bytes() : 0; }
  // ZeRO-1: adamw() updates a shard and refresh_work() follows the gather; the packed
  // copies are made in refresh_work()'s pass, not in adamw()'s.
  void set_sharded_updates(bool sharded) {
    if (packed_) packed_->set_sharded_updates(sharded);
  }
  // Drops every packed copy, for weights about to be freed (`kumiko plan`'s timing
  // models, one after another; copies are known by the working copy's address).
  void forget_packed_weights() {
    if (packed_) packed_ = std::make_unique<cpu::PackedWeights>();
  }
  cpu::Bf16Gemm gemm() const { return gemm_; }

  template <typename Dims>
  void prepare(const Dims&, int64_t, int64_t, int, int64_t) {}

  // ---- memory (host memory; "to_host" copies between the arena and host buffers) ----
  void* allocate(size_t bytes) { return fp32_.allocate(bytes); }
  // zero, copy, add_inplace, to_host, from_host, tokens, synchronize: HostOps.

  // ---- layers' ops: bf16 in, fp32 inside, bf16 out (the norms, GELU, SwiGLU, RoPE,
  // biases, positions and attention: HostOps) ----
  void linear(Act* y, const Act* x, const Act* w, const Act* b, int64_t N, int64_t in, int64_t out,
              Act* gelu_pre = nullptr) {
    // y[N, out] = x[N, in] W[out, in]^T (+ b), the GEMM storing bf16 itself where it can.
    // With GELU: the GEMM stores the bf16 pre-activation, then GELU of that stored value,
    // by the very call a selective recomputation makes again (so it is bitwise), and
    // what PyTorch's autocast does (GELU of the linear's bf16 output).
    Act* out_y = gelu_pre ? gelu_pre : y;
    if (!(packed_ && packed_->forward(out_y, x, w, b, N, in, out)))
      cpu::matmul_bf16_out(gemm_, false, true, N, out, in, x, in, w, in, b, false, out_y, out);
    if (gelu_pre) cpu::gelu_forward(y, gelu_pre, N * out);
  }
  void linear_backward(Act* dx, bool accumulate_dx, Grad* dw, bool overwrite_dw, Grad* db, const Act* dy,
                       const Act* x, const Act* w, int64_t N, int64_t in, int64_t out) {
    // dx[N, in] (+)= dy[N, out] W[out, in] in bf16; dw[out, in] (+)= dy^T[out, N] x[N, in] in fp32.
    // The bias gradient first, while dy, just written by the op before, is still in cache.
    if (db) cpu::bias_backward(db, dy, N, out);
    if (!(packed_ && packed_->input_gradient(dx, accumulate_dx, dy, w, N, in, out)))
      cpu::matmul_bf16_out(gemm_, false, false, N, in, out, dy, out, w, in, nullptr, accumulate_dx, dx, in);
    cpu::matmul_bf16(gemm_, true, false, out, in, N, dy, out, x, in, overwrite_dw ? 0.0f : 1.0f, dw, in);
  }
  void rope_at(Act* qkv, int64_t pos, int64_t Hq, int64_t Hkv, int64_t D, double theta) {
    const int64_t n = (Hq + 2 * Hkv) * D;
    float* f = widen(0, qkv, n);
    fp32_.rope_at(f, pos, Hq, Hkv, D, theta);
    cpu::narrow(qkv, f, n);
  }
  void attention_decode(Act* o, const Act* q, const Act* k, const Act* v, int64_t len, int64_t Hq, int64_t Hkv,
                        int64_t D) {
    float* of = scratch(3, Hq * D);
    fp32_.attention_decode(of, widen(0, q, Hq * D), widen(1, k, len * Hkv * D), widen(2, v, len * Hkv * D), len, Hq,
                           Hkv, D);
    cpu::narrow(o, of, Hq * D);
  }
  // Embedding rows are copied as bits (no arithmetic, no rounding).
  void embed(Act* o, const int32_t* ids, const Act* table, int64_t N, int64_t C, int64_t v0, int64_t Vl, int64_t) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < N; ++i) {
      const int64_t id = ids[i] - v0;
      if (id >= 0 && id < Vl)
        std::memcpy(o + i * C, table + id * C, static_cast<size_t>(C) * sizeof(bf16));
      else
        std::memset(static_cast<void*>(o + i * C), 0, static_cast<size_t>(C) * sizeof(bf16));
    }
  }
  void embed_backward(Grad* dtable, const Act* dx, const int32_t* host_ids, int64_t N, int64_t C, int64_t v0,
                      int64_t Vl, int64_t V) {
    if (v0 == 0 && Vl == V) return cpu::embedding_backward(dtable, dx, host_ids, N, C);
    fp32_.embed_backward(dtable, widen(0, dx, N * C), host_ids, N, C, v0, Vl, V);  // a vocab shard (tp > 1)
  }

  // ---- cross-entropy: the logits in fp32, the gradient stored back as bf16 ----
  void cross_entropy(Stat* losses, Act* logits, const int32_t* targets, int64_t N, int64_t V, bool backward,
                     double scale) {
    cpu::cross_entropy_bf16(losses, logits, targets, N, V, backward, static_cast<float>(scale));  // row by row
  }
  // The vocabulary-parallel loss on the bf16 logits as they are (no [N, Vl] fp32 copy).
  void ce_row_max(Stat* mx, const Act* logits, int64_t N, int64_t Vl) { cpu::ce_shard_max(mx, logits, N, Vl); }
  void ce_sums(Stat* sum, Stat* tgt, const Act* logits, const Stat* mx, const int32_t* targets, int64_t N, int64_t Vl,
               int64_t v0) {
    cpu::ce_shard_sums(sum, tgt, logits, mx, targets, N, Vl, v0);
  }
  void ce_finish(Stat* losses, Act* logits, const Stat* mx, const Stat* sum, const Stat* tgt, const int32_t* targets,
                 int64_t N, int64_t Vl, int64_t v0, bool backward, double scale) {
    cpu::ce_shard_finish(losses, logits, mx, sum, tgt, targets, N, Vl, v0, backward, static_cast<float>(scale));
  }
  double sum(const Stat* x, int64_t n) { return fp32_.sum(x, n); }

  // ---- optimizer: fp32 master weights and moments, then the bf16 working copy ----
  double sum_squares(const Grad* x, int64_t n) { return fp32_.sum_squares(x, n); }
  std::vector<double> sum_squares(const std::vector<std::pair<const Grad*, int64_t>>& ranges) {
    return fp32_.sum_squares(ranges);
  }
  using AdamWRange = backend::AdamWRange<Act, Grad>;
  using AdamW = AdamWStep;
  // One call over every range; the bf16 working copy is rounded in the update's own pass.
  void adamw(const std::vector<AdamWRange>& ranges, const AdamW& h) {
    std::vector<cpu::AdamWSlice<float>> slices;
    slices.reserve(ranges.size());
    for (const auto& r : ranges)
      slices.push_back({r.param, r.grad, r.m, r.v, r.work, r.n, r.decay ? h.weight_decay : 0.0});
    if (packed_) packed_->attach(slices);  // AdamW packs the weights as it rounds them
    cpu::adamw_update(slices.data(), slices.size(), h.lr, h.beta1, h.beta2, h.eps, h.grad_scale, h.step);
    if (packed_) packed_->updated();
  }
  void refresh_work(Act* work, const Grad* master, int64_t n) {
    if (packed_)
      packed_->narrow(work, master, n);  // packs each weight as it rounds it
    else
      cpu::narrow(work, master, n);
  }

  // Collectives: HostCollectives (bf16 travels as comm::BFloat16, the same type; the
  // communicator reduces it in fp32).

  std::string describe() const {
    if (gemm_ == cpu::Bf16Gemm::emulated)
      return std::string("cpu, dtype bf16 (emulated: software conversions, fp32 GEMM; attention tiles: ") +
             cpu::attention_bf16_tiles(head_dim_) + "; this CPU: " + cpu_features().describe() + ")";
    return std::string("cpu, dtype bf16 (bf16 GEMM: ") + cpu::bf16_gemm_name(gemm_) + ", " +
           cpu::bf16_gemm_kernels(gemm_) + (packed_ ? ", weights kept packed" : "") +
           "; attention tiles: " + cpu::attention_bf16_tiles(head_dim_) +
           "; other ops: bf16 storage, fp32 arithmetic; this CPU: " + cpu_features().describe() + ")";
  }

 private:
  // fp32 scratch, one buffer per operand slot, grown on demand and kept from call to call.
  float* scratch(int slot, int64_t n) {
    auto& s = scratch_[static_cast<size_t>(slot)];
    if (static_cast<int64_t>(s.size()) < n) s.resize(static_cast<size_t>(n));
    return s.data();
  }
  float* widen(int slot, const bf16* x, int64_t n) {
    float* f = scratch(slot, n);
    cpu::widen(f, x, n);
    return f;
  }

  cpu::Bf16Gemm gemm_;
  int64_t head_dim_;
  Cpu<float> fp32_;  // the fp32 kernels, and the arena's allocator
  std::vector<float> scratch_[4];
  std::unique_ptr<cpu::PackedWeights> packed_;  // null: every GEMM takes W as it is
};

}  // namespace kumiko::backend
