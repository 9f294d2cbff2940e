// Causal grouped-query attention on bf16 storage with every tile product on bf16 pairs
// (vdpbf16ps, bf16_dot.h): the tasks, the online softmax and the fp32 accumulators of
// attention.cpp, whose header describes the algorithm; attention.cpp calls these on CPUs
// with AVX512-BF16 when D is even.
//
// Precision, as the CUDA backend's tensor-core attention (attention_tc.cu):
//   - the first products, S = Q Kᵀ and dP = dO Vᵀ, multiply bf16 storage as it is, pairs
//     along the head dimension: products exact, sums in fp32, so the same arithmetic as
//     fp32 GEMMs on the widened tiles;
//   - P and dS, fp32, enter the second products (P V, Pᵀ dO, dSᵀ Q, dS K) as pairs
//     (hi, lo) = (bf16(x), bf16(x - hi)) against the other operand's element twice:
//     hi v + lo v carries x to ~2^-16 (bf16 P alone is off by up to 2^-9 of the largest
//     probabilities, which dominate the first keys' sums). Each such product costs two
//     bf16 multiply-adds per element, as an fp32 FMA would, without widening the tiles.
// Scores, row statistics, lse and every accumulator are fp32; dQ, dK, dV are summed in
// fp32 and rounded to bf16 once, when complete. Results depend only on the inputs, not
// on the thread count.
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cmath>
#include <vector>

#include "kernels/cpu/attention_tiles.h"
#include "kernels/cpu/bf16_dot.h"

namespace kumiko::cpu::detail {

namespace {

// The tile products leave out what the causal mask zeroes. Where a block's keys pass
// its first query (j0 + nk > i0 + 1: the diagonal blocks), its rows go in strips of
// kStrip queries and each strip takes only the keys up to its last query; where keys
// lie on the reduction side (P V, dS K, and Pᵀ dO, dSᵀ Q over queries), the strip's
// products stop at (or start from) that key. What is left out is exactly zero (exp of
// -inf is 0, so P and dS are 0 there and add nothing to an fp32 sum), so the results
// are bitwise those of the whole tiles, at 5/8 of a full diagonal block's products.
constexpr int64_t kStrip = 16;

// Keys [0, n) of the block at j0 that queries up to i0 + r1 - 1 see (of nk).
inline int64_t keys_seen(int64_t i0, int64_t j0, int64_t r1, int64_t nk) {
  return std::clamp<int64_t>(i0 + r1 - j0, 0, nk);
}

// Calls f(r0, r1, keys) for the row strips of an nq-row block, keys = keys_seen for the
// strip; a block whose first row sees every key is one strip.
template <typename F>
inline void causal_strips(int64_t nq, int64_t i0, int64_t j0, int64_t nk, F&& f) {
  if (keys_seen(i0, j0, 1, nk) == nk) {
    f(int64_t{0}, nq, nk);
    return;
  }
  for (int64_t r0 = 0; r0 < nq; r0 += kStrip) {
    const int64_t r1 = std::min(nq, r0 + kStrip);
    f(r0, r1, keys_seen(i0, j0, r1, nk));
  }
}

}  // namespace

void attention_forward_dpbf16(bf16* out, float* lse, const bf16* qkv, int64_t B, int64_t T,
                              int64_t Hq, int64_t Hkv, int64_t D) {
  const AttnLayout L{T, Hq, Hkv, D};
  const int64_t row = L.row(), group = Hq / Hkv, blocks = (T + kBlock - 1) / kBlock;
  const int64_t K2 = D / 2, ldd = round16(D);
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  const std::vector<int64_t> prefix = forward_cost_prefix(B * Hq * blocks, blocks);
#pragma omp parallel
  {
    // The key blocks of one (b, kv head) as B operands, packed when a task first needs
    // them and kept while the thread's tasks stay on that head (they run in (b, h, qb)
    // order): [blocks, K2, kBlock] K_jᵀ and [blocks, kBlock, ldd] V_j, each element twice.
    std::vector<uint32_t> kt(static_cast<size_t>(blocks * K2 * kBlock));
    std::vector<uint32_t> vd(static_cast<size_t>(blocks * kBlock * ldd));
    int64_t packed_bg = -1, packed = 0;  // whose blocks, how many
    std::vector<uint32_t> pw(static_cast<size_t>(kBlock * kBlock));  // [kBlock, kBlock] P (hi, lo)
    std::vector<float> s(static_cast<size_t>(kBlock * kBlock));  // scores, then P
    std::vector<float> acc(static_cast<size_t>(kBlock * D));     // unnormalised output
    float m[kBlock], l[kBlock];
    int64_t k0 = 0, k1 = 0;
    balanced_range(prefix, omp_get_thread_num(), omp_get_num_threads(), k0, k1);
    for (int64_t task = k0; task < k1; ++task) {
      const int64_t qb = task % blocks, h = task / blocks % Hq, b = task / blocks / Hq;
      const int64_t g = h / group, i0 = qb * kBlock, nq = std::min(kBlock, T - i0);
      const bf16* base = qkv + b * T * row;
      const Pair* q = as_pairs(base + i0 * row + L.q_off(h));
      if (packed_bg != b * Hkv + g) {
        packed_bg = b * Hkv + g;
        packed = 0;
      }
      for (; packed <= qb; ++packed) {
        const int64_t j0 = packed * kBlock, nk = std::min(kBlock, T - j0);
        pack_transposed(kt.data() + packed * K2 * kBlock, kBlock, base + j0 * row + L.k_off(g),
                        row, nk, K2);
        pack_dup(vd.data() + packed * kBlock * ldd, ldd, base + j0 * row + L.v_off(g), row, nk, D);
      }
      for (int64_t ii = 0; ii < nq; ++ii) {
        m[ii] = -std::numeric_limits<float>::infinity();
        l[ii] = 0.0f;
      }
      for (int64_t j0 = 0; j0 <= i0; j0 += kBlock) {
        const int64_t nk = std::min(kBlock, T - j0);
        const int64_t jb = j0 / kBlock;
        const Pair* ktj = kt.data() + jb * K2 * kBlock;
        causal_strips(nq, i0, j0, nk, [&](int64_t r0, int64_t r1, int64_t keys) {
          dpbf16_gemm(r1 - r0, keys, K2, scale, q + r0 * (row / 2), row / 2, ktj, kBlock, false,
                      s.data() + r0 * kBlock, kBlock);
        });
        for (int64_t ii = 0; ii < nq; ++ii) {
          float* sr = s.data() + ii * kBlock;
          const float corr =
              softmax_row(sr, nk, std::max<int64_t>(0, i0 + ii - j0 + 1), m[ii], l[ii]);
          Pair* pr = pw.data() + ii * kBlock;
#pragma omp simd
          for (int64_t jj = 0; jj < nk; ++jj) pr[jj] = split(sr[jj]);
          if (j0 > 0) {
            float* a = acc.data() + ii * D;
#pragma omp simd
            for (int64_t d = 0; d < D; ++d) a[d] *= corr;
          }
        }
        causal_strips(nq, i0, j0, nk, [&](int64_t r0, int64_t r1, int64_t keys) {
          dpbf16_gemm(r1 - r0, D, keys, 1.0f, pw.data() + r0 * kBlock, kBlock,
                      vd.data() + jb * kBlock * ldd, ldd, j0 > 0, acc.data() + r0 * D, D);
        });
      }
      for (int64_t ii = 0; ii < nq; ++ii) {
        const int64_t i = i0 + ii;
        const float inv = 1.0f / l[ii];
        bf16* o = out + (b * T + i) * Hq * D + h * D;
        const float* a = acc.data() + ii * D;
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) o[d] = narrow1(a[d] * inv);
        lse[(b * Hq + h) * T + i] = m[ii] + std::log(l[ii]);
      }
    }
  }
}

void attention_backward_dpbf16(bf16* dqkv, const bf16* dout, const bf16* qkv, const bf16* out,
                               const float* lse, int64_t B, int64_t T, int64_t Hq, int64_t Hkv,
                               int64_t D, bool overwrite) {
  const AttnLayout L{T, Hq, Hkv, D};
  const int64_t row = L.row(), group = Hq / Hkv, orow = Hq * D;
  const int64_t K2 = D / 2, ldd = round16(D);
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
#pragma omp parallel
  {
    const size_t tile = static_cast<size_t>(kBlock * kBlock);
    std::vector<uint32_t> kt(static_cast<size_t>(K2 * kBlock)), vt(kt.size());  // K_jᵀ, V_jᵀ
    std::vector<uint32_t> kd(static_cast<size_t>(kBlock * ldd));                // K_j twice
    std::vector<float> p(tile), ds(tile);                 // [nq, nk] P and dP, then dS
    std::vector<uint32_t> pt(tile), dst(tile);   // Pᵀ, dSᵀ [nk, nq]
    std::vector<uint32_t> pw(tile), dsw(tile);   // P, dS [nq, nk]
    std::vector<float> dkacc(static_cast<size_t>(kBlock * D)), dvacc(dkacc.size());
    std::vector<float> delta(static_cast<size_t>(group * T));  // [group, T] rowsum(dout*out)
    // Allocated by a thread's first task, [group, T, ...]: the group's dQ in fp32, and its
    // Q and dO rows each element twice (the B operands of dSᵀ Q and Pᵀ dO, packed once
    // per task rather than once per key block).
    std::vector<float> dqacc;
    std::vector<uint32_t> qd, dod;
#pragma omp for collapse(2) schedule(static)
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t g = 0; g < Hkv; ++g) {
        if (dqacc.empty()) {
          dqacc.resize(static_cast<size_t>(group * T * D));
          qd.resize(static_cast<size_t>(group * T * ldd));
          dod.resize(qd.size());
        }
        const bf16* base = qkv + b * T * row;
        bf16* dbase = dqkv + b * T * row;
        const bf16* obase = out + b * T * orow;
        const bf16* dobase = dout + b * T * orow;
        for (int64_t hh = 0; hh < group; ++hh) {
          const int64_t h = g * group + hh;
          row_dots(delta.data() + hh * T, obase + h * D, dobase + h * D, orow, T, D);
          if (overwrite)
            std::fill_n(dqacc.data() + hh * T * D, T * D, 0.0f);
          else
            load_tile(dqacc.data() + hh * T * D, dbase + L.q_off(h), row, T, D);
          pack_dup(qd.data() + hh * T * ldd, ldd, base + L.q_off(h), row, T, D);
          pack_dup(dod.data() + hh * T * ldd, ldd, dobase + h * D, orow, T, D);
        }
        for (int64_t j0 = 0; j0 < T; j0 += kBlock) {
          const int64_t nk = std::min(kBlock, T - j0);
          const bf16* ks = base + j0 * row + L.k_off(g);
          bf16* dks = dbase + j0 * row + L.k_off(g);
          bf16* dvs = dbase + j0 * row + L.v_off(g);
          pack_transposed(kt.data(), kBlock, ks, row, nk, K2);
          pack_transposed(vt.data(), kBlock, base + j0 * row + L.v_off(g), row, nk, K2);
          pack_dup(kd.data(), ldd, ks, row, nk, D);
          if (overwrite) {
            std::fill_n(dkacc.data(), nk * D, 0.0f);
            std::fill_n(dvacc.data(), nk * D, 0.0f);
          } else {
            load_tile(dkacc.data(), dks, row, nk, D);
            load_tile(dvacc.data(), dvs, row, nk, D);
          }
          for (int64_t hh = 0; hh < group; ++hh) {
            const int64_t h = g * group + hh;
            const float* lse_h = lse + (b * Hq + h) * T;
            const float* delta_h = delta.data() + hh * T;
            for (int64_t i0 = j0; i0 < T; i0 += kBlock) {
              const int64_t nq = std::min(kBlock, T - i0);
              const Pair* q = as_pairs(base + i0 * row + L.q_off(h));
              const Pair* dO = as_pairs(dobase + i0 * orow + h * D);
              // Masked columns a strip leaves out keep stale finite values: grad_row
              // overwrites them (P = 0, dS = 0).
              causal_strips(nq, i0, j0, nk, [&](int64_t q0, int64_t q1, int64_t keys) {
                dpbf16_gemm(q1 - q0, keys, K2, scale, q + q0 * (row / 2), row / 2, kt.data(), kBlock,
                            false, p.data() + q0 * kBlock, kBlock);
                dpbf16_gemm(q1 - q0, keys, K2, 1.0f, dO + q0 * (orow / 2), orow / 2, vt.data(),
                            kBlock, false, ds.data() + q0 * kBlock, kBlock);
              });
              for (int64_t ii = 0; ii < nq; ++ii) {
                float* pr = p.data() + ii * kBlock;
                float* dsr = ds.data() + ii * kBlock;
                grad_row(pr, dsr, nk, std::max<int64_t>(0, i0 + ii - j0 + 1), lse_h[i0 + ii],
                         delta_h[i0 + ii]);
                Pair* dsrow = dsw.data() + ii * kBlock;
                Pair* prow = pw.data() + ii * kBlock;
#pragma omp simd
                for (int64_t jj = 0; jj < nk; ++jj) {
                  dsrow[jj] = split(dsr[jj]);
                  prow[jj] = split(pr[jj]);
                }
              }
              // Pᵀ and dSᵀ, the A operands of the key-side products, by 16 x 16 word
              // transposes in registers (a scattered store per element cost more).
              pack_transposed(pt.data(), kBlock, as_bf16(pw.data()), 2 * kBlock, nq, nk);
              pack_transposed(dst.data(), kBlock, as_bf16(dsw.data()), 2 * kBlock, nq, nk);
              const int64_t r0 = (hh * T + i0) * ldd;  // rows i0.. of the head's Q and dO
              // dV, dK: key strips [c0, c1) sum over the queries that see them, from
              // query first = j0 + c0 - i0 on (the leading ones are masked); dQ: query
              // strips over the keys they see.
              const int64_t kstrip = keys_seen(i0, j0, 1, nk) == nk ? nk : kStrip;
              for (int64_t c0 = 0; c0 < nk; c0 += kstrip) {
                const int64_t c1 = std::min(nk, c0 + kstrip);
                const int64_t first = std::clamp<int64_t>(j0 + c0 - i0, 0, nq);
                dpbf16_gemm(c1 - c0, D, nq - first, 1.0f, pt.data() + c0 * kBlock + first, kBlock,
                            dod.data() + r0 + first * ldd, ldd, true, dvacc.data() + c0 * D, D);
                dpbf16_gemm(c1 - c0, D, nq - first, scale, dst.data() + c0 * kBlock + first, kBlock,
                            qd.data() + r0 + first * ldd, ldd, true, dkacc.data() + c0 * D, D);
              }
              causal_strips(nq, i0, j0, nk, [&](int64_t q0, int64_t q1, int64_t keys) {
                dpbf16_gemm(q1 - q0, D, keys, scale, dsw.data() + q0 * kBlock, kBlock, kd.data(), ldd,
                            true, dqacc.data() + (hh * T + i0 + q0) * D, D);
              });
            }
          }
          store_tile(dks, row, dkacc.data(), nk, D);
          store_tile(dvs, row, dvacc.data(), nk, D);
        }
        for (int64_t hh = 0; hh < group; ++hh)
          store_tile(dbase + L.q_off(g * group + hh), row, dqacc.data() + hh * T * D, T, D);
      }
    }
  }
}

}  // namespace kumiko::cpu::detail
