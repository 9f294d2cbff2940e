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
        dpbf16_gemm(nq, nk, K2, scale, q, row / 2, kt.data() + jb * K2 * kBlock, kBlock, false,
                    s.data(), kBlock);
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
        dpbf16_gemm(nq, D, nk, 1.0f, pw.data(), kBlock, vd.data() + jb * kBlock * ldd, ldd, j0 > 0,
                    acc.data(), D);
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
                               int64_t D) {
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
    std::vector<uint32_t> pt(tile), dst(tile), dsw(tile);     // Pᵀ, dSᵀ [nk, nq], dS [nq, nk]
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
          load_tile(dkacc.data(), dks, row, nk, D);
          load_tile(dvacc.data(), dvs, row, nk, D);
          for (int64_t hh = 0; hh < group; ++hh) {
            const int64_t h = g * group + hh;
            const float* lse_h = lse + (b * Hq + h) * T;
            const float* delta_h = delta.data() + hh * T;
            for (int64_t i0 = j0; i0 < T; i0 += kBlock) {
              const int64_t nq = std::min(kBlock, T - i0);
              const Pair* q = as_pairs(base + i0 * row + L.q_off(h));
              const Pair* dO = as_pairs(dobase + i0 * orow + h * D);
              dpbf16_gemm(nq, nk, K2, scale, q, row / 2, kt.data(), kBlock, false, p.data(), kBlock);
              dpbf16_gemm(nq, nk, K2, 1.0f, dO, orow / 2, vt.data(), kBlock, false, ds.data(),
                          kBlock);
              for (int64_t ii = 0; ii < nq; ++ii) {
                float* pr = p.data() + ii * kBlock;
                float* dsr = ds.data() + ii * kBlock;
                grad_row(pr, dsr, nk, std::max<int64_t>(0, i0 + ii - j0 + 1), lse_h[i0 + ii],
                         delta_h[i0 + ii]);
                Pair* dsrow = dsw.data() + ii * kBlock;
                for (int64_t jj = 0; jj < nk; ++jj) {
                  const Pair w = split(dsr[jj]);
                  dsrow[jj] = w;
                  dst[jj * kBlock + ii] = w;
                  pt[jj * kBlock + ii] = split(pr[jj]);
                }
              }
              const int64_t r0 = (hh * T + i0) * ldd;  // rows i0.. of the head's Q and dO
              dpbf16_gemm(nk, D, nq, 1.0f, pt.data(), kBlock, dod.data() + r0, ldd, true,
                          dvacc.data(), D);
              dpbf16_gemm(nk, D, nq, scale, dst.data(), kBlock, qd.data() + r0, ldd, true,
                          dkacc.data(), D);
              dpbf16_gemm(nq, D, nk, scale, dsw.data(), kBlock, kd.data(), ldd, true,
                          dqacc.data() + (hh * T + i0) * D, D);
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
