#pragma once
// What the CPU attention kernels share (internal header): the packed qkv layout, the
// cost-balanced split of forward tasks, the per-row softmax arithmetic and the tile
// copies between bf16 storage and fp32. attention.cpp multiplies tiles with BLAS;
// attention_dpbf16.cpp, for bf16 storage on CPUs with AVX512-BF16, with vdpbf16ps.
#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#include "kernels/cpu/common.h"

namespace kumiko::cpu::detail {

constexpr int64_t kBlock = 64;  // queries per query block and keys per key block

struct AttnLayout {
  int64_t T, Hq, Hkv, D;
  int64_t row() const { return (Hq + 2 * Hkv) * D; }  // stride of one token in qkv
  int64_t q_off(int64_t h) const { return h * D; }
  int64_t k_off(int64_t g) const { return (Hq + g) * D; }
  int64_t v_off(int64_t g) const { return (Hq + Hkv + g) * D; }
};

// Prefix sums of the forward tasks' costs: task k = (b * Hq + h) * blocks + qb costs
// qb + 1 key blocks.
inline std::vector<int64_t> forward_cost_prefix(int64_t tasks, int64_t blocks) {
  std::vector<int64_t> prefix(static_cast<size_t>(tasks + 1), 0);
  for (int64_t k = 0; k < tasks; ++k) prefix[k + 1] = prefix[k] + k % blocks + 1;
  return prefix;
}

// Tasks [begin, end) of thread `tid` out of `nt`: task k (cost c_k, prefix sum P_k before
// it, total C) goes to thread floor(nt * (P_k + c_k / 2) / C). Static and contiguous.
inline void balanced_range(const std::vector<int64_t>& prefix, int tid, int nt, int64_t& begin,
                           int64_t& end) {
  const int64_t n = static_cast<int64_t>(prefix.size()) - 1, total = prefix[n];
  auto owner = [&](int64_t k) {
    return (2 * prefix[k] + (prefix[k + 1] - prefix[k])) * nt / (2 * total);
  };
  begin = 0;
  while (begin < n && owner(begin) < tid) ++begin;
  end = begin;
  while (end < n && owner(end) <= tid) ++end;
}

// One row of a forward score tile: the causal mask from key `masked` on (keys j > i get
// -inf, hence p = 0), then the online softmax step: sr becomes exp(s - m_new), m and l
// the running max and sum. Returns exp(m_old - m_new), the rescale of the row's output
// so far (0 on the first block).
template <typename T>
[[gnu::always_inline]] inline T softmax_row(T* sr, int64_t nk, int64_t masked, T& m, T& l) {
  for (int64_t jj = masked; jj < nk; ++jj) sr[jj] = -std::numeric_limits<T>::infinity();
  T mx = m;
#pragma omp simd reduction(max : mx)
  for (int64_t jj = 0; jj < nk; ++jj) mx = sr[jj] > mx ? sr[jj] : mx;
  const T corr = exp_approx(m - mx);
  T sum = 0;
  // Two loops, not one that stores and sums: GCC 12's SVE code for the fused loop lost
  // the sum when inlined into attention_forward_dpbf16 (l = 0 under qemu-aarch64, SVE
  // 128 and 512 bits; correct with -fno-tree-vectorize or with the loops apart).
#pragma omp simd
  for (int64_t jj = 0; jj < nk; ++jj) sr[jj] = exp_approx(sr[jj] - mx);
#pragma omp simd reduction(+ : sum)
  for (int64_t jj = 0; jj < nk; ++jj) sum += sr[jj];
  m = mx;
  l = l * corr + sum;
  return corr;
}

// One row of a backward tile: pr holds the scores, dsr dP = dO Vᵀ; they become
// P = exp(s - lse) (masked as above) and dS = P (dP - delta).
template <typename T>
[[gnu::always_inline]] inline void grad_row(T* pr, T* dsr, int64_t nk, int64_t masked, T lse,
                                            T delta) {
  for (int64_t jj = masked; jj < nk; ++jj) pr[jj] = -std::numeric_limits<T>::infinity();
#pragma omp simd
  for (int64_t jj = 0; jj < nk; ++jj) {
    pr[jj] = exp_approx(pr[jj] - lse);
    dsr[jj] = pr[jj] * (dsr[jj] - delta);
  }
}

// delta[i] = rowsum(o_i * do_i) for T rows of D elements (leading dimension ld): the Δ
// of the backward's dS = P (dP - Δ).
template <typename S>
void row_dots(math_t<S>* delta, const S* o, const S* dO, int64_t ld, int64_t T, int64_t D) {
  for (int64_t i = 0; i < T; ++i) {
    math_t<S> sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int64_t d = 0; d < D; ++d) sum += detail::ld(o[i * ld + d]) * detail::ld(dO[i * ld + d]);
    delta[i] = sum;
  }
}

// Copies a [rows, D] tile between storage (leading dimension ld) and the arithmetic type
// (leading dimension D): the bf16 kernels' fp32 operands and dQ, dK, dV accumulators.
template <typename S, typename T>
void load_tile(T* dst, const S* src, int64_t ld, int64_t rows, int64_t D) {
  for (int64_t r = 0; r < rows; ++r)
#pragma omp simd
    for (int64_t d = 0; d < D; ++d) dst[r * D + d] = detail::ld(src[r * ld + d]);
}
template <typename S, typename T>
void store_tile(S* dst, int64_t ld, const T* acc, int64_t rows, int64_t D) {
  for (int64_t r = 0; r < rows; ++r)
#pragma omp simd
    for (int64_t d = 0; d < D; ++d) dst[r * ld + d] = detail::st<S>(acc[r * D + d]);
}

// Zeroes what one backward task (batch row dbase, kv head g) owns of dqkv: its group's
// query heads and its key and value head, at every token. The tasks' slices tile dqkv.
template <typename S>
void zero_task_slices(S* dbase, const AttnLayout& L, int64_t g, int64_t group) {
  for (int64_t t = 0; t < L.T; ++t) {
    S* r = dbase + t * L.row();
    std::fill_n(r + L.q_off(g * group), group * L.D, S(0));
    std::fill_n(r + L.k_off(g), L.D, S(0));
    std::fill_n(r + L.v_off(g), L.D, S(0));
  }
}

// attention_forward / attention_backward on bf16 storage with every tile product on
// vdpbf16ps (attention_dpbf16.cpp). D must be even (a row's pairs are whole words).
void attention_forward_dpbf16(bf16* out, float* lse, const bf16* qkv, int64_t B, int64_t T,
                              int64_t Hq, int64_t Hkv, int64_t D);
void attention_backward_dpbf16(bf16* dqkv, const bf16* dout, const bf16* qkv, const bf16* out,
                               const float* lse, int64_t B, int64_t T, int64_t Hq, int64_t Hkv,
                               int64_t D, bool overwrite);

}  // namespace kumiko::cpu::detail
