#pragma once
// A GEMM's B operand kept in oneDNN's packed bf16 layout between training steps, so the
// brgemm kernels read it as it is instead of packing it inside every call (internal
// header; backend::CpuBf16 keeps its linear weights this way, AdamW writes them).
//
// The layout is oneDNN's format tag BA16a{nb}b2a for B [K, N] (the one Debian's oneDNN 2.6
// asks for in its AVX512-BF16 and AMX brgemm matmuls): N in blocks of nb columns,
// outermost; inside one, K in blocks of 32 rows, each a 16 x nb array of row pairs
// (k even, k + 1) side by side. Element (k, n) lies at
//   (n / nb) * Kp * nb + (k / 32) * 32 * nb + (k % 32) / 2 * 2 * nb + (n % nb) * 2 + k % 2
// with K padded to Kp (a multiple of 32) and N to Np (a multiple of nb); the padding is
// zero. Within one N block that is simply [Kp / 2 pairs][nb] pair words, row pair p of
// column n at word p * nb + n % nb.
#include <cstdint>

#include "kumiko/core/bf16.h"

namespace kumiko::cpu {

struct PackedB {
  int64_t K = 0, N = 0;    // B's logical shape
  int64_t Kp = 0, Np = 0;  // padded: Kp a multiple of 32, Np of nb
  int64_t nb = 0;          // columns per N block; 0: no packed layout (use B as it is)

  explicit operator bool() const { return nb > 0; }
  int64_t elements() const { return Kp * Np; }
  int64_t offset(int64_t k, int64_t n) const {
    return (n / nb) * Kp * nb + (k / 32) * 32 * nb + (k % 32) / 2 * 2 * nb + (n % nb) * 2 + k % 2;
  }
};

// The layout for B [K, N] in blocks of nb columns (16, 32, 48 or 64).
PackedB packed_b_layout(int64_t K, int64_t N, int64_t nb);

// Rows r0 <= r < r1 of W [rows, cols] (row major, leading dimension ld) into `out` (the
// whole packed matrix, out[layout.elements()], padding zero beforehand):
//   as B = Wᵀ (layout.K = cols, layout.N = rows): a linear's forward, y = x Wᵀ;
//   as B = W  (layout.K = rows, layout.N = cols): its input gradient, dx = dy W.
// Any row range works; whole blocks (r0 and r1 multiples of nb for Wᵀ, of 32 for W)
// take the vectorised path. Threads may pack disjoint block-aligned ranges at once.
void pack_b_transposed_rows(const PackedB& layout, bf16* out, const bf16* w, int64_t ld, int64_t r0, int64_t r1);
void pack_b_rows(const PackedB& layout, bf16* out, const bf16* w, int64_t ld, int64_t r0, int64_t r1);

}  // namespace kumiko::cpu
