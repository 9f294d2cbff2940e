// Small GEMMs on bf16 pairs (bf16_dot.h): a register-blocked vdpbf16ps microkernel and a
// 16 x 16 in-register transpose for pack_transposed on CPUs with AVX512-BF16, plain loops
// elsewhere (what the tests check the layout with).
#include "kernels/cpu/bf16_dot.h"

#include <algorithm>
#include <cstdint>

#if defined(__AVX512BF16__) && defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace kumiko::cpu::detail {

#if defined(__AVX512BF16__) && defined(__AVX512F__)

namespace {

// C[MR rows, NR x 16 columns] from MR rows of A and NR 16-word column groups of B: MR x NR
// zmm accumulators (at most 16 of the 32 registers), one B load per group and one
// broadcast per row for each pair of k. `tail` masks the last group's columns.
template <int MR, int NR>
void micro(int64_t K2, const Pair* a, int64_t lda, const Pair* b, int64_t ldb, float alpha,
           bool accumulate, float* c, int64_t ldc, __mmask16 tail) {
  __m512 acc[MR][NR];
#pragma GCC unroll 4
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_setzero_ps();
  for (int64_t p = 0; p < K2; ++p) {
    __m512bh bv[NR];
#pragma GCC unroll 4
    for (int j = 0; j < NR; ++j) bv[j] = (__m512bh)_mm512_loadu_si512(b + p * ldb + 16 * j);
#pragma GCC unroll 4
    for (int i = 0; i < MR; ++i) {
      const __m512bh av = (__m512bh)_mm512_set1_epi32(static_cast<int>(a[i * lda + p]));
#pragma GCC unroll 4
      for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_dpbf16_ps(acc[i][j], av, bv[j]);
    }
  }
  const __m512 va = _mm512_set1_ps(alpha);
#pragma GCC unroll 4
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < NR; ++j) {
      const __mmask16 m = j == NR - 1 ? tail : __mmask16(0xffff);
      float* cp = c + i * ldc + 16 * j;
      const __m512 r = accumulate ? _mm512_fmadd_ps(va, acc[i][j], _mm512_maskz_loadu_ps(m, cp))
                                  : _mm512_mul_ps(va, acc[i][j]);
      _mm512_mask_storeu_ps(cp, m, r);
    }
}

using Micro = void (*)(int64_t, const Pair*, int64_t, const Pair*, int64_t, float, bool, float*,
                       int64_t, __mmask16);

template <int MR>
constexpr Micro pick(int nr) {
  switch (nr) {
    case 1: return micro<MR, 1>;
    case 2: return micro<MR, 2>;
    case 3: return micro<MR, 3>;
    default: return micro<MR, 4>;
  }
}

Micro pick(int mr, int nr) {
  switch (mr) {
    case 1: return pick<1>(nr);
    case 2: return pick<2>(nr);
    case 3: return pick<3>(nr);
    default: return pick<4>(nr);
  }
}

}  // namespace

void dpbf16_gemm(int64_t M, int64_t N, int64_t K2, float alpha, const Pair* A, int64_t lda,
                 const Pair* B, int64_t ldb, bool accumulate, float* C, int64_t ldc) {
  for (int64_t n0 = 0; n0 < N; n0 += 64) {  // 64 columns: one B panel, reused by every row block
    const int64_t nn = std::min<int64_t>(64, N - n0);
    const int nr = static_cast<int>((nn + 15) / 16);
    const __mmask16 tail = nn % 16 ? __mmask16((1u << (nn % 16)) - 1) : __mmask16(0xffff);
    for (int64_t m0 = 0; m0 < M; m0 += 4) {
      const int mr = static_cast<int>(std::min<int64_t>(4, M - m0));
      pick(mr, nr)(K2, A + m0 * lda, lda, B + n0, ldb, alpha, accumulate, C + m0 * ldc + n0, ldc,
                   tail);
    }
  }
}


namespace {

// r[i] becomes column i of the 16 x 16 words r held as rows: per 128-bit lane, 4 x 4
// transposes (epi32 then epi64 unpacks), then the lanes moved into place (two rounds of
// shuffle_i32x4). GCC 12's unpack intrinsics pass _mm512_undefined_epi32() as their
// unused merge source, which -Wmaybe-uninitialized reports once inlined (GCC bug 105593,
// fixed in GCC 13): silenced here only.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
inline void transpose16(__m512i r[16]) {
  __m512i t[16];
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
  }
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i) {  // r[4 i + k], lane L: column 4 L + k of rows 4 i .. 4 i + 3
    r[4 * i] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
    r[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
    r[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
    r[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
  }
#pragma GCC unroll 4
  for (int k = 0; k < 4; ++k) {
    const __m512i v0 = _mm512_shuffle_i32x4(r[k], r[4 + k], 0x44);  // lanes 0, 1 of both
    const __m512i v1 = _mm512_shuffle_i32x4(r[k], r[4 + k], 0xee);  // lanes 2, 3
    const __m512i w0 = _mm512_shuffle_i32x4(r[8 + k], r[12 + k], 0x44);
    const __m512i w1 = _mm512_shuffle_i32x4(r[8 + k], r[12 + k], 0xee);
    t[k] = _mm512_shuffle_i32x4(v0, w0, 0x88);       // lane 0 of the four row groups
    t[4 + k] = _mm512_shuffle_i32x4(v0, w0, 0xdd);   // lane 1
    t[8 + k] = _mm512_shuffle_i32x4(v1, w1, 0x88);   // lane 2
    t[12 + k] = _mm512_shuffle_i32x4(v1, w1, 0xdd);  // lane 3
  }
#pragma GCC unroll 16
  for (int i = 0; i < 16; ++i) r[i] = t[i];
}
#pragma GCC diagnostic pop

}  // namespace

namespace {

// 16 words, bypassing the cache (no read of the line first) where asked and aligned.
inline void store(Pair* d, __m512i v, bool stream) {
  if (stream && reinterpret_cast<uintptr_t>(d) % 64 == 0)
    _mm512_stream_si512(reinterpret_cast<__m512i*>(d), v);
  else
    _mm512_storeu_si512(d, v);
}

}  // namespace

// 16 x 16 word blocks through registers; rows from n up to round16(n) load as zeros,
// which writes the zero columns the layout asks for.
void pack_transposed(Pair* dst, int64_t ldb, const bf16* src, int64_t ld, int64_t n, int64_t K2, bool stream) {
  for (int64_t j0 = 0; j0 < n; j0 += 16) {
    const int rows = static_cast<int>(std::min<int64_t>(16, n - j0));
    for (int64_t p0 = 0; p0 < K2; p0 += 16) {
      const int64_t np = std::min<int64_t>(16, K2 - p0);
      const __mmask16 pm = np == 16 ? __mmask16(0xffff) : __mmask16((1u << np) - 1);
      __m512i r[16];
#pragma GCC unroll 16
      for (int i = 0; i < 16; ++i)
        r[i] = i < rows ? _mm512_maskz_loadu_epi32(pm, as_pairs(src + (j0 + i) * ld) + p0)
                        : _mm512_setzero_si512();
      transpose16(r);
      for (int64_t i = 0; i < np; ++i) store(dst + (p0 + i) * ldb + j0, r[i], stream);
    }
  }
  if (stream) _mm_sfence();
}

// 32 columns at a time: the two rows' words interleaved by two vpermt2w.
void pack_interleaved(Pair* dst, int64_t ldb, const bf16* src, int64_t ld, int64_t npairs, int64_t n, bool stream) {
  alignas(64) static constexpr uint16_t kLo[32] = {0, 32, 1, 33, 2, 34, 3, 35, 4, 36, 5, 37, 6, 38, 7, 39,
                                                   8, 40, 9, 41, 10, 42, 11, 43, 12, 44, 13, 45, 14, 46, 15, 47};
  alignas(64) static constexpr uint16_t kHi[32] = {16, 48, 17, 49, 18, 50, 19, 51, 20, 52, 21, 53, 22, 54, 23, 55,
                                                   24, 56, 25, 57, 26, 58, 27, 59, 28, 60, 29, 61, 30, 62, 31, 63};
  const __m512i lo = _mm512_load_si512(kLo), hi = _mm512_load_si512(kHi);
  for (int64_t p = 0; p < npairs; ++p) {
    const bf16* r0 = src + 2 * p * ld;
    const bf16* r1 = r0 + ld;
    Pair* d = dst + p * ldb;
    for (int64_t c = 0; c < n; c += 32) {
      const int64_t left = std::min<int64_t>(32, n - c);
      const __mmask32 m = left == 32 ? __mmask32(~0u) : __mmask32((1u << left) - 1);
      const __m512i a = _mm512_maskz_loadu_epi16(m, r0 + c), b = _mm512_maskz_loadu_epi16(m, r1 + c);
      const __mmask16 m0 = left >= 16 ? __mmask16(0xffff) : __mmask16((1u << left) - 1);
      const __mmask16 m1 = left == 32 ? __mmask16(0xffff) : left > 16 ? __mmask16((1u << (left - 16)) - 1) : 0;
      if (left == 32) {
        store(d + c, _mm512_permutex2var_epi16(a, lo, b), stream);
        store(d + c + 16, _mm512_permutex2var_epi16(a, hi, b), stream);
      } else {
        _mm512_mask_storeu_epi32(d + c, m0, _mm512_permutex2var_epi16(a, lo, b));
        _mm512_mask_storeu_epi32(d + c + 16, m1, _mm512_permutex2var_epi16(a, hi, b));
      }
    }
  }
  if (stream) _mm_sfence();
}

#else

void pack_interleaved(Pair* dst, int64_t ldb, const bf16* src, int64_t ld, int64_t npairs, int64_t n, bool) {
  for (int64_t p = 0; p < npairs; ++p)
    for (int64_t c = 0; c < n; ++c)
      dst[p * ldb + c] = uint32_t{src[2 * p * ld + c].bits} | (uint32_t{src[(2 * p + 1) * ld + c].bits} << 16);
}

void dpbf16_gemm(int64_t M, int64_t N, int64_t K2, float alpha, const Pair* A, int64_t lda,
                 const Pair* B, int64_t ldb, bool accumulate, float* C, int64_t ldc) {
  const auto lo = [](uint32_t w) { return widen1(bf16{static_cast<uint16_t>(w & 0xffffu)}); };
  const auto hi = [](uint32_t w) { return widen1(bf16{static_cast<uint16_t>(w >> 16)}); };
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      float s = 0;
      for (int64_t p = 0; p < K2; ++p) {
        const uint32_t a = A[m * lda + p], b = B[p * ldb + n];
        s += lo(a) * lo(b) + hi(a) * hi(b);
      }
      float& c = C[m * ldc + n];
      c = accumulate ? alpha * s + c : alpha * s;
    }
}


void pack_transposed(Pair* dst, int64_t ldb, const bf16* src, int64_t ld, int64_t n, int64_t K2, bool) {
  for (int64_t j = 0; j < n; ++j) {
    const Pair* row = as_pairs(src + j * ld);
    for (int64_t p = 0; p < K2; ++p) dst[p * ldb + j] = row[p];
  }
  for (int64_t p = 0; p < K2; ++p)
    for (int64_t j = n; j < round16(n); ++j) dst[p * ldb + j] = 0;
}

#endif


void pack_dup(Pair* dst, int64_t ldb, const bf16* src, int64_t ld, int64_t k, int64_t n) {
  for (int64_t r = 0; r < k; ++r) {
    Pair* d = dst + r * ldb;
#pragma omp simd
    for (int64_t c = 0; c < n; ++c) d[c] = dup(src[r * ld + c]);
    for (int64_t c = n; c < round16(n); ++c) d[c] = 0;
  }
}

}  // namespace kumiko::cpu::detail
