#pragma once
// The CPU backend: the ops the model calls (docs/backends.md lists them) on host memory,
// run by kumiko's OpenMP kernels (kernels/cpu) and CBLAS. T = float for training,
// double for the finite-difference gradient checks of the same model code.
//
// Activations, working weights, master weights and gradients are all T; the norms'
// statistics and the losses too. Memory moves, the collectives (on the calling thread)
// and the ops shared with CpuBf16 are HostOps' (host_ops.h).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "kumiko/backend/adamw.h"
#include "kumiko/backend/host_ops.h"
#include "kumiko/core/error.h"
#include "kumiko/ops/adamw.h"
#include "kumiko/ops/cross_entropy.h"
#include "kumiko/ops/elementwise.h"
#include "kumiko/ops/embedding.h"
#include "kumiko/ops/gelu.h"
#include "kumiko/ops/linear.h"

namespace kumiko::backend {

template <typename T>
class Cpu : public HostOps<T, T, T> {
 public:
  using Act = T;   // activations and the weights the matmuls read
  using Grad = T;  // gradients, master weights, optimizer state
  using Stat = T;  // norm statistics, log-sum-exp, losses
  static constexpr bool kHost = true;
  // zero_grads() marks the gradients unwritten instead of zeroing them: a weight
  // gradient's first GEMM of a step overwrites it (beta = 0), any other first writer
  // zeroes it before accumulating (model/transformer.h, gr() and gw()).
  static constexpr bool kLazyGradZero = true;
  static constexpr const char* kName = "cpu";

  // Called by the model before it plans its arena, with its shapes (model::Dims, the
  // micro-batch, the tp size, the parameters held): a backend sizes its workspaces.
  template <typename Dims>
  void prepare(const Dims&, int64_t /*batch*/, int64_t /*seq_len*/, int /*tp*/, int64_t /*params*/) {}

  // ---- memory ----
  // One zeroed, 64-byte aligned host block (the model's arena).
  void* allocate(size_t bytes) {
    const size_t n = (std::max<size_t>(bytes, 1) + 63) / 64 * 64;
    void* p = std::aligned_alloc(64, n);
    KUMIKO_CHECK(p != nullptr, "out of memory allocating ", n, " bytes of activations");
    std::memset(p, 0, n);
    blocks_.emplace_back(static_cast<char*>(p), &std::free);
    return p;
  }
  // zero, copy, add_inplace, to_host, from_host, tokens, synchronize: HostOps.

  // ---- layers' ops ----
  // y[N, out] = x[N, in] w^T (+ b); with gelu_pre, y = GELU(pre) and pre keeps x w^T + b.
  void linear(Act* y, const Act* x, const Act* w, const Act* b, int64_t N, int64_t in, int64_t out,
              Act* gelu_pre = nullptr) {
    if (!gelu_pre) return cpu::linear_forward(y, x, w, b, N, in, out);
    cpu::linear_forward(gelu_pre, x, w, b, N, in, out);
    cpu::gelu_forward(y, gelu_pre, N * out);
  }
  // dx[N, in] (= or += ) dy w; dw (= or +=) dy^T x; db += column sums of dy (nullable).
  void linear_backward(Act* dx, bool accumulate_dx, Grad* dw, bool overwrite_dw, Grad* db, const Act* dy,
                       const Act* x, const Act* w, int64_t N, int64_t in, int64_t out) {
    cpu::linear_backward(dx, dw, db, dy, x, w, N, in, out, accumulate_dx, !overwrite_dw);
  }
  // Decoding one token (KV cache): RoPE of position `pos` on its q and k heads
  // (qkv [(Hq + 2Hkv) D], the HF rotate_half convention of rope_forward).
  void rope_at(Act* qkv, int64_t pos, int64_t Hq, int64_t Hkv, int64_t D, double theta) {
    for (int64_t h = 0; h < Hq + Hkv; ++h) {
      T* head = qkv + h * D;
      for (int64_t i = 0; i < D / 2; ++i) {
        const double angle = static_cast<double>(pos) * std::pow(theta, -2.0 * static_cast<double>(i) / D);
        const double c = std::cos(angle), s = std::sin(angle);
        const double a = head[i], b = head[i + D / 2];
        head[i] = static_cast<T>(a * c - b * s);
        head[i + D / 2] = static_cast<T>(b * c + a * s);
      }
    }
  }
  // The token's query heads (q [Hq D], the start of its qkv row) over the first `len`
  // cached positions (k, v [len, Hkv D]): out [Hq D]. Causal by construction.
  void attention_decode(Act* out, const Act* q, const Act* k, const Act* v, int64_t len, int64_t Hq, int64_t Hkv,
                        int64_t D) {
    const double scale = 1.0 / std::sqrt(static_cast<double>(D));
    const int64_t group = Hq / Hkv;
    std::vector<double> scores(static_cast<size_t>(len));
    for (int64_t h = 0; h < Hq; ++h) {
      const int64_t kv = h / group;
      const T* qh = q + h * D;
      double mx = -INFINITY;
      for (int64_t t = 0; t < len; ++t) {
        const T* kt = k + (t * Hkv + kv) * D;
        double dot = 0;
        for (int64_t i = 0; i < D; ++i) dot += static_cast<double>(qh[i]) * kt[i];
        scores[t] = dot * scale;
        mx = std::max(mx, scores[t]);
      }
      double sum = 0;
      for (int64_t t = 0; t < len; ++t) sum += scores[t] = std::exp(scores[t] - mx);
      for (int64_t i = 0; i < D; ++i) {
        double acc = 0;
        for (int64_t t = 0; t < len; ++t) acc += scores[t] * v[(t * Hkv + kv) * D + i];
        out[h * D + i] = static_cast<T>(acc / sum);
      }
    }
  }
  // out[N, C] = rows of table for ids in [v0, v0 + Vl) (zero rows for other ids).
  void embed(Act* out, const int32_t* ids, const Act* table, int64_t N, int64_t C, int64_t v0, int64_t Vl,
             int64_t V) {
    if (v0 == 0 && Vl == V) return cpu::embedding_forward(out, ids, table, N, C);
    for (int64_t i = 0; i < N; ++i) {
      const int64_t id = ids[i] - v0;
      if (id >= 0 && id < Vl)
        std::copy_n(table + id * C, C, out + i * C);
      else
        this->zero(out + i * C, C);
    }
  }
  // dtable[id - v0] += dx[i] for ids in the shard; host_ids are the host copy.
  void embed_backward(Grad* dtable, const Act* dx, const int32_t* host_ids, int64_t N, int64_t C, int64_t v0,
                      int64_t Vl, int64_t V) {
    if (v0 == 0 && Vl == V) return cpu::embedding_backward(dtable, dx, host_ids, N, C);
    for (int64_t i = 0; i < N; ++i) {
      const int64_t id = host_ids[i] - v0;
      if (id >= 0 && id < Vl) cpu::add_inplace(dtable + id * C, dx + i * C, C);
    }
  }

  // ---- cross-entropy ----
  // Whole vocabulary: losses[N]; with backward the logits become (softmax - onehot) * scale.
  void cross_entropy(Stat* losses, Act* logits, const int32_t* targets, int64_t N, int64_t V, bool backward,
                     double scale) {
    if (backward)
      cpu::cross_entropy_forward_backward(losses, logits, logits, targets, N, V, static_cast<T>(scale));
    else
      cpu::cross_entropy_forward(losses, logits, targets, N, V);
  }
  // Vocabulary shards [v0, v0 + Vl) (Megatron's vocab-parallel cross-entropy), in
  // three steps around the model's all-reduces: the row maxima (then max over ranks),
  // sums of exponentials and target logits (then sum), the losses and gradients.
  // fp32: the vectorised kernels of ops/cross_entropy.h; other types (double, the
  // gradient checks) the scalar loops below.
  void ce_row_max(Stat* mx, const Act* logits, int64_t N, int64_t Vl) {
    if constexpr (std::is_same_v<T, float>) return cpu::ce_shard_max(mx, logits, N, Vl);
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < N; ++i) {
      const T* row = logits + i * Vl;
      mx[i] = *std::max_element(row, row + Vl);
    }
  }
  void ce_sums(Stat* sum, Stat* tgt, const Act* logits, const Stat* mx, const int32_t* targets, int64_t N,
               int64_t Vl, int64_t v0) {
    if constexpr (std::is_same_v<T, float>) return cpu::ce_shard_sums(sum, tgt, logits, mx, targets, N, Vl, v0);
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < N; ++i) {
      const T* row = logits + i * Vl;
      double s = 0;
      for (int64_t j = 0; j < Vl; ++j) s += std::exp(static_cast<double>(row[j] - mx[i]));
      sum[i] = static_cast<T>(s);
      const int64_t t = targets[i] - v0;
      tgt[i] = t >= 0 && t < Vl ? row[t] : T(0);
    }
  }
  void ce_finish(Stat* losses, Act* logits, const Stat* mx, const Stat* sum, const Stat* tgt, const int32_t* targets,
                 int64_t N, int64_t Vl, int64_t v0, bool backward, double scale) {
    if constexpr (std::is_same_v<T, float>)
      return cpu::ce_shard_finish(losses, logits, mx, sum, tgt, targets, N, Vl, v0, backward,
                                  static_cast<float>(scale));
    const T s = static_cast<T>(scale);
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < N; ++i) {
      losses[i] = std::log(sum[i]) + mx[i] - tgt[i];
      if (!backward) continue;
      T* row = logits + i * Vl;
      const int64_t t = targets[i] - v0;
      for (int64_t j = 0; j < Vl; ++j) row[j] = (std::exp(row[j] - mx[i]) / sum[i] - (j == t ? T(1) : T(0))) * s;
    }
  }
  // Sum of n losses, in order, in double (on the host).
  double sum(const Stat* x, int64_t n) {
    double total = 0;
    for (int64_t i = 0; i < n; ++i) total += x[i];
    return total;
  }

  // ---- optimizer ----
  // Squares of x[n] summed in double.
  double sum_squares(const Grad* x, int64_t n) { return cpu::sum_squares(x, n); }
  // The sums of squares of several ranges (one result each, in order).
  std::vector<double> sum_squares(const std::vector<std::pair<const Grad*, int64_t>>& ranges) {
    std::vector<double> out;
    for (const auto& [x, n] : ranges) out.push_back(cpu::sum_squares(x, n));
    return out;
  }
  // AdamW (PyTorch semantics, ops/adamw.h) over ranges of the flat buffers: master
  // weights, their working copy (the same memory here), gradients, moments.
  using AdamWRange = backend::AdamWRange<Act, Grad>;
  using AdamW = AdamWStep;
  void adamw(const std::vector<AdamWRange>& ranges, const AdamW& h) {
    std::vector<cpu::AdamWSlice<T>> slices;
    slices.reserve(ranges.size());
    for (const auto& r : ranges)
      slices.push_back({r.param, r.grad, r.m, r.v, nullptr, r.n, r.decay ? h.weight_decay : 0.0});
    cpu::adamw_update(slices.data(), slices.size(), h.lr, h.beta1, h.beta2, h.eps, h.grad_scale, h.step);
  }
  // The working copy of master weights (nothing to do when they are the same memory).
  void refresh_work(Act* /*work*/, const Grad* /*master*/, int64_t /*n*/) {}

  std::string describe() const { return "cpu"; }

 private:
  std::vector<std::unique_ptr<char, decltype(&std::free)>> blocks_;
};

}  // namespace kumiko::backend
