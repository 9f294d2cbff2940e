#pragma once
// Small GEMMs on bf16 pairs for kernels that multiply their own tiles (attention on bf16
// storage), internal header. AVX512-BF16's vdpbf16ps multiplies 16 pairs of bf16 by 16
// pairs and adds both products to 16 fp32 lanes: C[m, n] += a0 b0 + a1 b1, with the
// products exact in fp32 and the sums rounded in fp32, as a GEMM's fp32 accumulation.
// Operands are arrays of pair words (two bf16 in one 32-bit word, the first in the low
// half, as two consecutive bf16 lie in memory):
//   A [M, K2] words, leading dimension lda: read straight from bf16 rows of even length
//     (two consecutive elements of a row are one word), or written by split();
//   B [K2, ldb] words: packed by pack_transposed() or pack_dup(); ldb is a multiple of
//     16 and the columns from N to N rounded up to 16 are zero.
// A pair can carry one fp32 value as hi = bf16(x), lo = bf16(x - hi) against a B word
// holding one bf16 twice: hi v + lo v = x v to ~2^-16 of x (split(), pack_dup()). That is
// how the CUDA backend's tensor-core attention multiplies P and dS (attention_tc.cu).
#include <cstdint>

#include "kernels/cpu/bf16_convert.h"
#include "kumiko/core/bf16.h"

namespace kumiko::cpu::detail {

#if defined(__AVX512BF16__) && defined(__AVX512F__)
inline constexpr bool kHaveDpbf16 = true;  // dpbf16_gemm runs on vdpbf16ps
#else
inline constexpr bool kHaveDpbf16 = false;  // dpbf16_gemm is the portable loop (tests only)
#endif

// Two bf16 in one 32-bit word; may alias the bf16 arrays it is read from.
typedef uint32_t __attribute__((__may_alias__)) Pair;

inline const Pair* as_pairs(const bf16* p) { return reinterpret_cast<const Pair*>(p); }
// Pair words as the bf16 rows pack_transposed reads (it reads them back as Pair).
inline const bf16* as_bf16(const uint32_t* p) { return reinterpret_cast<const bf16*>(p); }

// The pair (hi, lo) of x: hi = bf16(x), lo = bf16(x - hi) (x - hi is exact in fp32).
[[gnu::always_inline]] inline uint32_t split(float x) {
  const bf16 hi = narrow1(x);
  const bf16 lo = narrow1(x - widen1(hi));
  return uint32_t{hi.bits} | (uint32_t{lo.bits} << 16);
}
// The pair (x, x).
[[gnu::always_inline]] inline uint32_t dup(bf16 x) { return uint32_t{x.bits} * 0x10001u; }

constexpr int64_t round16(int64_t n) { return (n + 15) / 16 * 16; }

// C [M, N] (fp32, leading dimension ldc) = alpha * A B, plus C's old value if accumulate.
// Deterministic: the result depends on the operands only, not on threads.
void dpbf16_gemm(int64_t M, int64_t N, int64_t K2, float alpha, const Pair* A, int64_t lda,
                 const Pair* B, int64_t ldb, bool accumulate, float* C, int64_t ldc);

// B = Xᵀ for X [n, 2 K2] bf16 (leading dimension ld, even): dst[p, j] = X's word p of row j.
// stream: store past the caches (a copy read much later: packed weights).
void pack_transposed(Pair* dst, int64_t ldb, const bf16* src, int64_t ld, int64_t n, int64_t K2,
                     bool stream = false);
// Row pairs of X [2 npairs, n] bf16 (leading dimension ld) side by side:
// dst[p, j] = (X[2p, j], X[2p + 1, j]); columns from n on are left as they are.
void pack_interleaved(Pair* dst, int64_t ldb, const bf16* src, int64_t ld, int64_t npairs, int64_t n,
                      bool stream = false);
// B = X for X [k, n] bf16 (leading dimension ld), each element as a pair (x, x), k words
// deep: the B of an A made by split().
void pack_dup(Pair* dst, int64_t ldb, const bf16* src, int64_t ld, int64_t k, int64_t n);

}  // namespace kumiko::cpu::detail
