// Causal grouped-query attention, flash formulation on the CPU.
//
// Forward: one task per (b, query head, query tile of kTile rows); key tiles of kTile
// keys are transposed into a [D, kTile] scratch so that the scores of one query row
// are kTile-wide vector FMAs; online softmax keeps a running max m, sum l and the
// unnormalised output row; lse = m + log(l) is saved.
// Backward (flash-attention-2): one task per (b, kv head), so that dK/dV of the kv
// head and dQ of its query heads are owned by one task (no races, no atomics). For
// each key tile, every query row at or after it recomputes p = exp(s - lse) and adds
// its contributions to dV, dK (tile accumulators) and dQ (in place).
#include "kumiko/ops/attention.h"

#include <omp.h>

#include <cmath>
#include <limits>
#include <vector>

#include "kernels/cpu/common.h"
#include "kumiko/core/error.h"

namespace kumiko::cpu {

namespace {

constexpr int64_t kTile = 32;  // queries per tile and keys per tile

struct Layout {
  int64_t T, Hq, Hkv, D;
  int64_t row() const { return (Hq + 2 * Hkv) * D; }  // stride of one token in qkv
  int64_t q_off(int64_t h) const { return h * D; }
  int64_t k_off(int64_t g) const { return (Hq + g) * D; }
  int64_t v_off(int64_t g) const { return (Hq + Hkv + g) * D; }
};

// dst[d * kTile + jj] = src_row(j0 + jj)[d] for jj < nk, 0 for the padding.
template <typename T>
void transpose_tile(T* dst, const T* base, int64_t row, int64_t j0, int64_t nk, int64_t D) {
  for (int64_t d = 0; d < D; ++d) {
    for (int64_t jj = 0; jj < kTile; ++jj) dst[d * kTile + jj] = T(0);
  }
  for (int64_t jj = 0; jj < nk; ++jj) {
    const T* src = base + (j0 + jj) * row;
    for (int64_t d = 0; d < D; ++d) dst[d * kTile + jj] = src[d];
  }
}

// s[jj] = sum_d q[d] * kt[d, jj] for all kTile columns.
template <typename T>
[[gnu::always_inline]] inline void tile_dots(T* s, const T* q, const T* kt, int64_t D) {
  T acc[kTile] = {};
  for (int64_t d = 0; d < D; ++d) {
    const T qd = q[d];
    const T* ktd = kt + d * kTile;
#pragma omp simd
    for (int64_t jj = 0; jj < kTile; ++jj) acc[jj] = detail::fmadd(qd, ktd[jj], acc[jj]);
  }
  for (int64_t jj = 0; jj < kTile; ++jj) s[jj] = acc[jj];
}

template <typename T>
void check_heads(int64_t Hq, int64_t Hkv, int64_t D) {
  KUMIKO_CHECK(Hkv > 0 && Hq % Hkv == 0, "attention: Hq=", Hq, " is not a multiple of Hkv=", Hkv);
  KUMIKO_CHECK(D > 0, "attention: head dim must be positive");
}

}  // namespace

template <typename T>
void attention_forward(T* out, T* lse, const T* qkv, int64_t B, int64_t T_, int64_t Hq,
                       int64_t Hkv, int64_t D) {
  check_heads<T>(Hq, Hkv, D);
  const Layout L{T_, Hq, Hkv, D};
  const int64_t row = L.row(), group = Hq / Hkv, tiles = (T_ + kTile - 1) / kTile;
  const T scale = T(1) / std::sqrt(T(D));
  const T neg_inf = -std::numeric_limits<T>::infinity();
#pragma omp parallel
  {
    std::vector<T> kt(static_cast<size_t>(D * kTile));  // [D, kTile] keys of the tile
    std::vector<T> acc(static_cast<size_t>(kTile * D));  // [kTile, D] unnormalised output
    T m[kTile], l[kTile], s[kTile];
#pragma omp for collapse(3) schedule(static, 1)
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t h = 0; h < Hq; ++h) {
        for (int64_t qt = 0; qt < tiles; ++qt) {
          const int64_t i0 = qt * kTile, nq = std::min(kTile, T_ - i0);
          const T* base = qkv + b * T_ * row;
          const int64_t g = h / group;
          for (int64_t ii = 0; ii < nq; ++ii) {
            m[ii] = neg_inf;
            l[ii] = T(0);
            for (int64_t d = 0; d < D; ++d) acc[ii * D + d] = T(0);
          }
          for (int64_t j0 = 0; j0 < i0 + nq; j0 += kTile) {
            const int64_t nk = std::min(kTile, T_ - j0);
            transpose_tile(kt.data(), base + L.k_off(g), row, j0, nk, D);
            for (int64_t ii = 0; ii < nq; ++ii) {
              const int64_t i = i0 + ii;
              tile_dots(s, base + i * row + L.q_off(h), kt.data(), D);
              const int64_t valid = std::min(nk, i - j0 + 1);  // causal: keys j <= i
              T mx = m[ii];
              for (int64_t jj = 0; jj < valid; ++jj) {
                s[jj] *= scale;
                mx = std::max(mx, s[jj]);
              }
              const T corr = detail::exp_approx(m[ii] - mx);  // 0 on the first tile
              T sum = 0;
#pragma omp simd reduction(+ : sum)
              for (int64_t jj = 0; jj < kTile; ++jj) {
                s[jj] = jj < valid ? detail::exp_approx(s[jj] - mx) : T(0);
                sum += s[jj];
              }
              m[ii] = mx;
              l[ii] = l[ii] * corr + sum;
              T* a = acc.data() + ii * D;
#pragma omp simd
              for (int64_t d = 0; d < D; ++d) a[d] *= corr;
              for (int64_t jj = 0; jj < valid; ++jj) {
                const T p = s[jj];
                const T* v = base + (j0 + jj) * row + L.v_off(g);
#pragma omp simd
                for (int64_t d = 0; d < D; ++d) a[d] = detail::fmadd(p, v[d], a[d]);
              }
            }
          }
          for (int64_t ii = 0; ii < nq; ++ii) {
            const int64_t i = i0 + ii;
            const T inv = T(1) / l[ii];
            T* o = out + (b * T_ + i) * Hq * D + h * D;
            const T* a = acc.data() + ii * D;
#pragma omp simd
            for (int64_t d = 0; d < D; ++d) o[d] = a[d] * inv;
            lse[(b * Hq + h) * T_ + i] = m[ii] + std::log(l[ii]);
          }
        }
      }
    }
  }
}

template <typename T>
void attention_backward(T* dqkv, const T* dout, const T* qkv, const T* out, const T* lse,
                        int64_t B, int64_t T_, int64_t Hq, int64_t Hkv, int64_t D) {
  check_heads<T>(Hq, Hkv, D);
  const Layout L{T_, Hq, Hkv, D};
  const int64_t row = L.row(), group = Hq / Hkv, orow = Hq * D;
  const T scale = T(1) / std::sqrt(T(D));
#pragma omp parallel
  {
    std::vector<T> kt(static_cast<size_t>(D * kTile));  // [D, kTile]
    std::vector<T> vt(static_cast<size_t>(D * kTile));  // [D, kTile]
    std::vector<T> dk(static_cast<size_t>(kTile * D));  // [kTile, D]
    std::vector<T> dv(static_cast<size_t>(kTile * D));  // [kTile, D]
    std::vector<T> delta(static_cast<size_t>(group * T_));  // [group, T] rowsum(dout*out)
    T p[kTile], ds[kTile];
#pragma omp for collapse(2) schedule(static)
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t g = 0; g < Hkv; ++g) {
        const T* base = qkv + b * T_ * row;
        T* dbase = dqkv + b * T_ * row;
        const T* obase = out + b * T_ * orow;
        const T* dobase = dout + b * T_ * orow;
        for (int64_t hh = 0; hh < group; ++hh) {
          const int64_t h = g * group + hh;
          for (int64_t i = 0; i < T_; ++i) {
            const T* o = obase + i * orow + h * D;
            const T* dO = dobase + i * orow + h * D;
            T sum = 0;
#pragma omp simd reduction(+ : sum)
            for (int64_t d = 0; d < D; ++d) sum += o[d] * dO[d];
            delta[hh * T_ + i] = sum;
          }
        }
        for (int64_t j0 = 0; j0 < T_; j0 += kTile) {
          const int64_t nk = std::min(kTile, T_ - j0);
          transpose_tile(kt.data(), base + L.k_off(g), row, j0, nk, D);
          transpose_tile(vt.data(), base + L.v_off(g), row, j0, nk, D);
          std::fill(dk.begin(), dk.end(), T(0));
          std::fill(dv.begin(), dv.end(), T(0));
          for (int64_t hh = 0; hh < group; ++hh) {
            const int64_t h = g * group + hh;
            const T* lse_h = lse + (b * Hq + h) * T_;
            for (int64_t i = j0; i < T_; ++i) {
              const T* q = base + i * row + L.q_off(h);
              const T* dO = dobase + i * orow + h * D;
              T* dq = dbase + i * row + L.q_off(h);
              const int64_t valid = std::min(nk, i - j0 + 1);
              const T lse_i = lse_h[i], delta_i = delta[hh * T_ + i];
              tile_dots(p, q, kt.data(), D);
              tile_dots(ds, dO, vt.data(), D);  // dp = dO · v_j
#pragma omp simd
              for (int64_t jj = 0; jj < kTile; ++jj) {
                p[jj] = jj < valid ? detail::exp_approx(p[jj] * scale - lse_i) : T(0);
                ds[jj] = p[jj] * (ds[jj] - delta_i) * scale;  // includes the score scale
              }
              for (int64_t jj = 0; jj < valid; ++jj) {
                const T pj = p[jj], dsj = ds[jj];
                const T* k = base + (j0 + jj) * row + L.k_off(g);
                T* dvj = dv.data() + jj * D;
                T* dkj = dk.data() + jj * D;
#pragma omp simd
                for (int64_t d = 0; d < D; ++d) {
                  dvj[d] = detail::fmadd(pj, dO[d], dvj[d]);
                  dkj[d] = detail::fmadd(dsj, q[d], dkj[d]);
                  dq[d] = detail::fmadd(dsj, k[d], dq[d]);
                }
              }
            }
          }
          for (int64_t jj = 0; jj < nk; ++jj) {
            T* dkr = dbase + (j0 + jj) * row + L.k_off(g);
            T* dvr = dbase + (j0 + jj) * row + L.v_off(g);
#pragma omp simd
            for (int64_t d = 0; d < D; ++d) {
              dkr[d] += dk[jj * D + d];
              dvr[d] += dv[jj * D + d];
            }
          }
        }
      }
    }
  }
}

template void attention_forward<float>(float*, float*, const float*, int64_t, int64_t, int64_t,
                                       int64_t, int64_t);
template void attention_forward<double>(double*, double*, const double*, int64_t, int64_t, int64_t,
                                        int64_t, int64_t);
template void attention_backward<float>(float*, const float*, const float*, const float*,
                                        const float*, int64_t, int64_t, int64_t, int64_t, int64_t);
template void attention_backward<double>(double*, const double*, const double*, const double*,
                                         const double*, int64_t, int64_t, int64_t, int64_t,
                                         int64_t);

}  // namespace kumiko::cpu
