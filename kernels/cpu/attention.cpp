// Causal grouped-query attention, flash-attention-2 on the CPU with BLAS on tiles.
//
// Forward: one task per (b, query head, query block of kBlock rows); tasks are split
// between threads by a static, cost-balanced partition (a query block's cost is its
// number of key blocks). For each key block up to the diagonal: S = scale·Q·Kᵀ (GEMM),
// causal mask on the diagonal block, online softmax (running max m, sum l, rescaled
// output), O += P·V (GEMM); lse = m + log(l) is saved.
// Backward: one task per (b, kv head), so that dK/dV of the kv head and dQ of its
// query heads are owned by one task (no races, no atomics). For each key block j, each
// query head of the group and each query block i >= j: recompute S, P = exp(S - lse),
// dV_j += Pᵀ·dO_i, dP = dO_i·V_jᵀ, dS = P∘(dP − Δ_i) with Δ = rowsum(dO∘O),
// dQ_i += scale·dS·K_j, dK_j += scale·dSᵀ·Q_i (GEMMs accumulating straight into dqkv;
// to overwrite it, each task first zeroes the slices it owns).
// The GEMMs read Q/V/dO in place inside the packed qkv rows (leading dimension = row).
// OpenBLAS (OpenMP build) runs single-threaded inside the parallel region. Every task's
// arithmetic is independent of the thread that runs it, so results are bitwise identical
// for any thread count. bf16 storage (the CPU backend's bf16) with AVX512-BF16 and an
// even D: attention_dpbf16.cpp, every tile product on vdpbf16ps. Otherwise each task widens
// the tiles it multiplies to fp32, sums dQ, dK and dV in fp32 and rounds them once.
#include "kumiko/ops/attention.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "kernels/cpu/attention_tiles.h"
#include "kernels/cpu/bf16_dot.h"
#include "kernels/cpu/common.h"
#include "kumiko/core/error.h"
#include "kumiko/ops/matmul.h"

namespace kumiko::cpu {

namespace {

using detail::kBlock;
using Layout = detail::AttnLayout;

template <typename T>
void check_heads(int64_t Hq, int64_t Hkv, int64_t D) {
  KUMIKO_CHECK(Hkv > 0 && Hq % Hkv == 0, "attention: Hq=", Hq, " is not a multiple of Hkv=", Hkv);
  KUMIKO_CHECK(D > 0, "attention: head dim must be positive");
}

// dst[d, jj] = src[jj * ld + d] for jj < nk (dst [D, kBlock]). OpenBLAS's NT GEMM on
// 64-sized blocks runs at ~60-80 GFLOP/s here against ~110 for NN, so Q·Kᵀ is an NN
// GEMM on a transposed copy of the key block.
template <typename S, typename T>
void transpose_block(T* dst, const S* src, int64_t ld, int64_t nk, int64_t D) {
  for (int64_t jj = 0; jj < nk; ++jj) {
    const S* r = src + jj * ld;
    for (int64_t d = 0; d < D; ++d) dst[d * kBlock + jj] = detail::ld(r[d]);
  }
}

// A [rows, D] tile of storage S (leading dimension ld) as a GEMM operand of the
// arithmetic type T: read in place when S is T (ld unchanged); bf16 widened into buf
// (leading dimension D).
template <typename S, typename T>
const T* tile(const S* src, int64_t& ld, int64_t rows, int64_t D, T* buf) {
  if constexpr (std::is_same_v<S, T>) {
    return src;
  } else {
    detail::load_tile(buf, src, ld, rows, D);
    ld = D;
    return buf;
  }
}
}  // namespace

template <typename S>
void attention_forward(S* out, math_t<S>* lse, const S* qkv, int64_t B, int64_t T_, int64_t Hq,
                       int64_t Hkv, int64_t D) {
  using T = math_t<S>;
  constexpr bool kWiden = !std::is_same_v<S, T>;  // bf16: tiles widened to fp32
  check_heads<T>(Hq, Hkv, D);
  if constexpr (kWiden) {
    if (detail::kHaveDpbf16 && D % 2 == 0)
      return detail::attention_forward_dpbf16(out, lse, qkv, B, T_, Hq, Hkv, D);
  }
  const Layout L{T_, Hq, Hkv, D};
  const int64_t row = L.row(), group = Hq / Hkv, blocks = (T_ + kBlock - 1) / kBlock;
  const T scale = T(1) / std::sqrt(T(D));
  const T neg_inf = -std::numeric_limits<T>::infinity();
  const std::vector<int64_t> prefix = detail::forward_cost_prefix(B * Hq * blocks, blocks);
#pragma omp parallel
  {
    std::vector<T> kt(static_cast<size_t>(D * kBlock));      // [D, kBlock] K_jᵀ
    std::vector<T> s(static_cast<size_t>(kBlock * kBlock));  // [kBlock, kBlock] scores / P
    std::vector<T> acc(static_cast<size_t>(kBlock * D));     // [kBlock, D] unnormalised out
    std::vector<T> qbuf(kWiden ? static_cast<size_t>(kBlock * D) : 0);  // bf16: Q_i, V_j in fp32
    std::vector<T> vbuf(qbuf.size());
    T m[kBlock], l[kBlock];
    int64_t k0 = 0, k1 = 0;
    detail::balanced_range(prefix, omp_get_thread_num(), omp_get_num_threads(), k0, k1);
    for (int64_t task = k0; task < k1; ++task) {
      const int64_t qb = task % blocks, h = task / blocks % Hq, b = task / blocks / Hq;
      const int64_t g = h / group, i0 = qb * kBlock, nq = std::min(kBlock, T_ - i0);
      const S* base = qkv + b * T_ * row;
      int64_t ldq = row;
      const T* q = tile(base + i0 * row + L.q_off(h), ldq, nq, D, qbuf.data());
      for (int64_t ii = 0; ii < nq; ++ii) {
        m[ii] = neg_inf;
        l[ii] = T(0);
      }
      for (int64_t j0 = 0; j0 <= i0; j0 += kBlock) {
        const int64_t nk = std::min(kBlock, T_ - j0);
        transpose_block(kt.data(), base + j0 * row + L.k_off(g), row, nk, D);
        matmul<T>(false, false, nq, nk, D, scale, q, ldq, kt.data(), kBlock, T(0), s.data(),
                  kBlock);
        for (int64_t ii = 0; ii < nq; ++ii) {
          const T corr = detail::softmax_row(s.data() + ii * kBlock, nk,
                                             std::max<int64_t>(0, i0 + ii - j0 + 1), m[ii], l[ii]);
          if (j0 > 0) {
            T* a = acc.data() + ii * D;
#pragma omp simd
            for (int64_t d = 0; d < D; ++d) a[d] *= corr;
          }
        }
        int64_t ldv = row;
        const T* v = tile(base + j0 * row + L.v_off(g), ldv, nk, D, vbuf.data());
        matmul<T>(false, false, nq, D, nk, T(1), s.data(), kBlock, v, ldv, j0 > 0 ? T(1) : T(0), acc.data(), D);
      }
      for (int64_t ii = 0; ii < nq; ++ii) {
        const int64_t i = i0 + ii;
        const T inv = T(1) / l[ii];
        S* o = out + (b * T_ + i) * Hq * D + h * D;
        const T* a = acc.data() + ii * D;
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) o[d] = detail::st<S>(a[d] * inv);
        lse[(b * Hq + h) * T_ + i] = m[ii] + std::log(l[ii]);
      }
    }
  }
}

template <typename S>
void attention_backward(S* dqkv, const S* dout, const S* qkv, const S* out, const math_t<S>* lse,
                        int64_t B, int64_t T_, int64_t Hq, int64_t Hkv, int64_t D, bool overwrite) {
  using T = math_t<S>;
  constexpr bool kWiden = !std::is_same_v<S, T>;  // bf16: tiles widened, gradients summed in fp32
  check_heads<T>(Hq, Hkv, D);
  if constexpr (kWiden) {
    if (detail::kHaveDpbf16 && D % 2 == 0)
      return detail::attention_backward_dpbf16(dqkv, dout, qkv, out, lse, B, T_, Hq, Hkv, D,
                                               overwrite);
  }
  const Layout L{T_, Hq, Hkv, D};
  const int64_t row = L.row(), group = Hq / Hkv, orow = Hq * D;
  const T scale = T(1) / std::sqrt(T(D));
#pragma omp parallel
  {
    std::vector<T> kt(static_cast<size_t>(D * kBlock));      // [D, kBlock] K_jᵀ
    std::vector<T> vt(static_cast<size_t>(D * kBlock));      // [D, kBlock] V_jᵀ
    std::vector<T> p(static_cast<size_t>(kBlock * kBlock));   // [kBlock, kBlock] P
    std::vector<T> ds(static_cast<size_t>(kBlock * kBlock));  // [kBlock, kBlock] dP, then dS
    std::vector<T> delta(static_cast<size_t>(group * T_));    // [group, T] rowsum(dout*out)
    // bf16 only: fp32 copies of K_j, Q_i, dO_i and fp32 accumulators of dK_j, dV_j and the
    // group's dQ (stored as bf16 once complete); float and double work in place.
    const size_t tile_n = kWiden ? static_cast<size_t>(kBlock * D) : 0;
    std::vector<T> kbuf(tile_n), qbuf(tile_n), dobuf(tile_n), dkacc(tile_n), dvacc(tile_n);
    // [group, T, D], allocated by a thread's first task: at most min(threads, B Hkv)
    // of them, so never more than an fp32 copy of qkv's q part.
    std::vector<T> dqacc;
#pragma omp for collapse(2) schedule(static)
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t g = 0; g < Hkv; ++g) {
        if (kWiden && dqacc.empty()) dqacc.resize(static_cast<size_t>(group * T_ * D));
        const S* base = qkv + b * T_ * row;
        S* dbase = dqkv + b * T_ * row;
        const S* obase = out + b * T_ * orow;
        const S* dobase = dout + b * T_ * orow;
        if constexpr (!kWiden)  // float, double: the GEMMs accumulate in place
          if (overwrite) detail::zero_task_slices(dbase, L, g, group);
        for (int64_t hh = 0; hh < group; ++hh) {
          const int64_t h = g * group + hh;
          detail::row_dots(delta.data() + hh * T_, obase + h * D, dobase + h * D, orow, T_, D);
          if constexpr (kWiden) {
            if (overwrite)
              std::fill_n(dqacc.data() + hh * T_ * D, T_ * D, T(0));
            else
              detail::load_tile(dqacc.data() + hh * T_ * D, dbase + L.q_off(h), row, T_, D);
          }
        }
        for (int64_t j0 = 0; j0 < T_; j0 += kBlock) {
          const int64_t nk = std::min(kBlock, T_ - j0);
          const S* ks = base + j0 * row + L.k_off(g);
          const S* vs = base + j0 * row + L.v_off(g);
          S* dks = dbase + j0 * row + L.k_off(g);
          S* dvs = dbase + j0 * row + L.v_off(g);
          transpose_block(kt.data(), ks, row, nk, D);
          transpose_block(vt.data(), vs, row, nk, D);
          int64_t ldk = row, lddkv = row;
          const T* k = tile(ks, ldk, nk, D, kbuf.data());
          T* dk = nullptr;
          T* dv = nullptr;
          if constexpr (kWiden) {
            if (overwrite) {
              std::fill_n(dkacc.data(), nk * D, T(0));
              std::fill_n(dvacc.data(), nk * D, T(0));
            } else {
              detail::load_tile(dkacc.data(), dks, row, nk, D);
              detail::load_tile(dvacc.data(), dvs, row, nk, D);
            }
            dk = dkacc.data();
            dv = dvacc.data();
            lddkv = D;
          } else {
            dk = dks;
            dv = dvs;
          }
          for (int64_t hh = 0; hh < group; ++hh) {
            const int64_t h = g * group + hh;
            const T* lse_h = lse + (b * Hq + h) * T_;
            const T* delta_h = delta.data() + hh * T_;
            for (int64_t i0 = j0; i0 < T_; i0 += kBlock) {
              const int64_t nq = std::min(kBlock, T_ - i0);
              int64_t ldq = row, ldo = orow, lddq = row;
              const T* q = tile(base + i0 * row + L.q_off(h), ldq, nq, D, qbuf.data());
              const T* dO = tile(dobase + i0 * orow + h * D, ldo, nq, D, dobuf.data());
              T* dq = nullptr;
              if constexpr (kWiden) {
                dq = dqacc.data() + (hh * T_ + i0) * D;
                lddq = D;
              } else {
                dq = dbase + i0 * row + L.q_off(h);
              }
              matmul<T>(false, false, nq, nk, D, scale, q, ldq, kt.data(), kBlock, T(0), p.data(),
                        kBlock);
              matmul<T>(false, false, nq, nk, D, T(1), dO, ldo, vt.data(), kBlock, T(0), ds.data(),
                        kBlock);
              for (int64_t ii = 0; ii < nq; ++ii)
                detail::grad_row(p.data() + ii * kBlock, ds.data() + ii * kBlock, nk,
                                 std::max<int64_t>(0, i0 + ii - j0 + 1), lse_h[i0 + ii],
                                 delta_h[i0 + ii]);
              matmul<T>(true, false, nk, D, nq, T(1), p.data(), kBlock, dO, ldo, T(1), dv, lddkv);
              matmul<T>(true, false, nk, D, nq, scale, ds.data(), kBlock, q, ldq, T(1), dk, lddkv);
              matmul<T>(false, false, nq, D, nk, scale, ds.data(), kBlock, k, ldk, T(1), dq, lddq);
            }
          }
          if constexpr (kWiden) {
            detail::store_tile(dks, row, dkacc.data(), nk, D);
            detail::store_tile(dvs, row, dvacc.data(), nk, D);
          }
        }
        if constexpr (kWiden)
          for (int64_t hh = 0; hh < group; ++hh)
            detail::store_tile(dbase + L.q_off(g * group + hh), row, dqacc.data() + hh * T_ * D, T_, D);
      }
    }
  }
}

const char* attention_bf16_tiles(int64_t D) {
  if (!detail::kHaveDpbf16) return "fp32";
  return D % 2 == 0 ? "vdpbf16ps" : "fp32 (odd head dim)";
}

template void attention_forward<float>(float*, float*, const float*, int64_t, int64_t, int64_t,
                                       int64_t, int64_t);
template void attention_forward<double>(double*, double*, const double*, int64_t, int64_t, int64_t,
                                        int64_t, int64_t);
template void attention_backward<float>(float*, const float*, const float*, const float*,
                                        const float*, int64_t, int64_t, int64_t, int64_t, int64_t,
                                        bool);
template void attention_backward<double>(double*, const double*, const double*, const double*,
                                         const double*, int64_t, int64_t, int64_t, int64_t,
                                         int64_t, bool);
template void attention_forward<bf16>(bf16*, float*, const bf16*, int64_t, int64_t, int64_t, int64_t, int64_t);
template void attention_backward<bf16>(bf16*, const bf16*, const bf16*, const bf16*, const float*, int64_t,
                                       int64_t, int64_t, int64_t, int64_t, bool);

}  // namespace kumiko::cpu
