// Fused softmax + cross-entropy, one row per task: max, sum of exp (vectorised
// detail::exp_approx; the backward keeps each exp), then (for the backward) the
// gradient written in place of the row. Probabilities live only in the gradient's
// buffer, so dlogits may alias logits.
#include "kumiko/ops/cross_entropy.h"

#include <cmath>
#include <limits>
#include <vector>

#include "kernels/cpu/bf16_convert.h"
#include "kernels/cpu/common.h"
#include "kumiko/core/error.h"

namespace kumiko::cpu {

namespace {

void check_targets(const int32_t* targets, int64_t N, int64_t V) {
  for (int64_t n = 0; n < N; ++n) {
    KUMIKO_USER_CHECK(targets[n] >= 0 && targets[n] < V, "cross_entropy: target ", targets[n],
                      " at row ", n, " is outside the vocabulary [0, ", V, ")");
  }
}

// log(sum(exp(row))) computed stably. The max is a value select, not std::max (which
// returns a reference): with std::max GCC 12 left this loop scalar, 60 % of the loss.
template <typename T>
T row_logsumexp_from(const T* row, int64_t V, T mx) {
  T sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t v = 0; v < V; ++v) sum += detail::exp_approx(row[v] - mx);
  return mx + std::log(sum);
}
template <typename T>
T row_max(const T* row, int64_t V) {
  T mx = -std::numeric_limits<T>::infinity();
#pragma omp simd reduction(max : mx)
  for (int64_t v = 0; v < V; ++v) mx = row[v] > mx ? row[v] : mx;
  return mx;
}

// The backward's exponentials, kept: e[v] = exp(x[v] - mx) (e may alias x), and their
// sum. Two loops, not one that stores and sums (GCC 12's SVE code lost such a sum once,
// attention_tiles.h's softmax_row). Not inlined, so that row_loss and cross_entropy_bf16
// run the same code and add the terms in the same order: their results stay bit for bit
// the same on every target (Bf16.FusedKernelsMatchWidenComputeNarrow).
template <typename T>
[[gnu::noinline]] T exp_and_sum(T* e, const T* x, int64_t V, T mx) {
#pragma omp simd
  for (int64_t v = 0; v < V; ++v) e[v] = detail::exp_approx(x[v] - mx);
  T sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t v = 0; v < V; ++v) sum += e[v];
  return sum;
}

// One row: returns the loss; with drow, also writes the gradient (softmax - onehot) *
// scale there (drow may alias row: each index is read before it is written). The
// gradient is exp(x - max), kept from the sum, times scale / sum: one exp per element,
// and the arithmetic of the vocabulary-parallel shards (ce_shard_finish).
template <typename T>
T row_loss(const T* row, T* drow, int64_t target, int64_t V, T dloss_scale) {
  const T mx = row_max(row, V);
  const T xt = row[target];
  if (!drow) return row_logsumexp_from(row, V, mx) - xt;
  const T sum = exp_and_sum(drow, row, V, mx);
  const T inv = dloss_scale / sum;
#pragma omp simd
  for (int64_t v = 0; v < V; ++v) drow[v] = drow[v] * inv;
  drow[target] -= dloss_scale;
  return mx + std::log(sum) - xt;
}

}  // namespace

template <typename T>
void cross_entropy_forward(T* losses, const T* logits, const int32_t* targets, int64_t N,
                           int64_t V) {
  check_targets(targets, N, V);
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) losses[n] = row_loss<T>(logits + n * V, nullptr, targets[n], V, T(0));
}

template <typename T>
void cross_entropy_forward_backward(T* losses, T* dlogits, const T* logits, const int32_t* targets,
                                    int64_t N, int64_t V, T dloss_scale) {
  check_targets(targets, N, V);
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n)
    losses[n] = row_loss(logits + n * V, dlogits + n * V, targets[n], V, dloss_scale);  // may alias
}

void cross_entropy_bf16(float* losses, bf16* logits, const int32_t* targets, int64_t N, int64_t V, bool backward,
                        float dloss_scale) {
  check_targets(targets, N, V);
#pragma omp parallel
  {
    std::vector<float> buf(static_cast<size_t>(V));  // this thread's row in fp32 (L1/L2-sized)
    float* f = buf.data();
#pragma omp for schedule(static)
    for (int64_t n = 0; n < N; ++n) {
      // row_loss's passes with the widening fused into the max and the narrowing into
      // the gradient: the same arithmetic, bit for bit.
      bf16* row = logits + n * V;
      float mx = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : mx)
      for (int64_t v = 0; v < V; ++v) {
        f[v] = detail::widen1(row[v]);
        mx = f[v] > mx ? f[v] : mx;
      }
      const int64_t t = targets[n];
      const float xt = f[t];
      if (!backward) {
        losses[n] = row_logsumexp_from(f, V, mx) - xt;
        continue;
      }
      const float sum = exp_and_sum(f, f, V, mx);
      const float inv = dloss_scale / sum;
#pragma omp simd
      for (int64_t v = 0; v < V; ++v) {
        const float g = f[v] * inv;
        f[v] = g;  // kept for the target's element, below
        row[v] = detail::narrow1(g);
      }
      f[t] -= dloss_scale;  // as row_loss: from the stored product, two roundings
      row[t] = detail::narrow1(f[t]);
      losses[n] = mx + std::log(sum) - xt;
    }
  }
}

template void cross_entropy_forward<float>(float*, const float*, const int32_t*, int64_t, int64_t);
template void cross_entropy_forward<double>(double*, const double*, const int32_t*, int64_t,
                                            int64_t);
template void cross_entropy_forward_backward<float>(float*, float*, const float*, const int32_t*,
                                                    int64_t, int64_t, float);
template void cross_entropy_forward_backward<double>(double*, double*, const double*,
                                                     const int32_t*, int64_t, int64_t, double);

namespace {

// One finished row in fp32: (softmax - onehot) * scale over the shard's columns.
void shard_finish_row(float* row, float m, float inv, int64_t t, int64_t Vl, float scale) {
#pragma omp simd
  for (int64_t v = 0; v < Vl; ++v) row[v] = detail::exp_approx(row[v] - m) * inv;
  if (t >= 0 && t < Vl) row[t] -= scale;
}

}  // namespace

template <typename S>
void ce_shard_max(float* mx, const S* logits, int64_t N, int64_t Vl) {
  using detail::ld;
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const S* row = logits + n * Vl;
    float m = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : m)
    for (int64_t v = 0; v < Vl; ++v) m = ld(row[v]) > m ? ld(row[v]) : m;  // a select: vectorises
    mx[n] = m;
  }
}

template <typename S>
void ce_shard_sums(float* sum, float* tgt, const S* logits, const float* mx, const int32_t* targets, int64_t N,
                   int64_t Vl, int64_t v0) {
  using detail::ld;
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const S* row = logits + n * Vl;
    const float m = mx[n];
    float s = 0;
#pragma omp simd reduction(+ : s)
    for (int64_t v = 0; v < Vl; ++v) s += detail::exp_approx(ld(row[v]) - m);
    sum[n] = s;
    const int64_t t = targets[n] - v0;
    tgt[n] = t >= 0 && t < Vl ? ld(row[t]) : 0.0f;
  }
}

void ce_shard_finish(float* losses, float* logits, const float* mx, const float* sum, const float* tgt,
                     const int32_t* targets, int64_t N, int64_t Vl, int64_t v0, bool backward, float scale) {
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    losses[n] = std::log(sum[n]) + mx[n] - tgt[n];
    if (backward) shard_finish_row(logits + n * Vl, mx[n], scale / sum[n], targets[n] - v0, Vl, scale);
  }
}

void ce_shard_finish(float* losses, bf16* logits, const float* mx, const float* sum, const float* tgt,
                     const int32_t* targets, int64_t N, int64_t Vl, int64_t v0, bool backward, float scale) {
#pragma omp parallel
  {
    std::vector<float> buf(static_cast<size_t>(backward ? Vl : 0));  // this thread's row in fp32
    float* f = buf.data();
#pragma omp for schedule(static)
    for (int64_t n = 0; n < N; ++n) {
      losses[n] = std::log(sum[n]) + mx[n] - tgt[n];
      if (!backward) continue;
      bf16* row = logits + n * Vl;
#pragma omp simd
      for (int64_t v = 0; v < Vl; ++v) f[v] = detail::widen1(row[v]);
      shard_finish_row(f, mx[n], scale / sum[n], targets[n] - v0, Vl, scale);
#pragma omp simd
      for (int64_t v = 0; v < Vl; ++v) row[v] = detail::narrow1(f[v]);
    }
  }
}

template void ce_shard_max<float>(float*, const float*, int64_t, int64_t);
template void ce_shard_max<bf16>(float*, const bf16*, int64_t, int64_t);
template void ce_shard_sums<float>(float*, float*, const float*, const float*, const int32_t*, int64_t, int64_t,
                                   int64_t);
template void ce_shard_sums<bf16>(float*, float*, const bf16*, const float*, const int32_t*, int64_t, int64_t,
                                  int64_t);

}  // namespace kumiko::cpu
