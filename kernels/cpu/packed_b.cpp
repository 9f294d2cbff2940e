// Packing bf16 weights into oneDNN's BA16a{nb}b2a layout (packed_b.h). One N block is a
// [Kp / 2][nb] array of pair words, so B = Wᵀ is detail::pack_transposed of nb rows of W
// (16 x 16 word transposes in registers on AVX512-BF16 CPUs) and B = W interleaves row
// pairs of W (detail::pack_interleaved). Partial blocks and an odd K's last row go one
// element at a time through PackedB::offset.
#include "kernels/cpu/packed_b.h"

#include <algorithm>

#include "kernels/cpu/bf16_dot.h"
#include "kumiko/core/error.h"

namespace kumiko::cpu {

using detail::Pair;

PackedB packed_b_layout(int64_t K, int64_t N, int64_t nb) {
  KUMIKO_CHECK(K > 0 && N > 0 && (nb == 16 || nb == 32 || nb == 48 || nb == 64), "packed_b_layout: K ", K, " N ",
               N, " nb ", nb);
  PackedB b;
  b.K = K, b.N = N, b.nb = nb;
  b.Kp = (K + 31) / 32 * 32;
  b.Np = (N + nb - 1) / nb * nb;
  return b;
}

void pack_b_transposed_rows(const PackedB& L, bf16* out, const bf16* w, int64_t ld, int64_t r0, int64_t r1) {
  // Row r of W is column n = r of B; its elements are B's K.
  const int64_t K2 = L.K / 2;
  for (int64_t n0 = r0; n0 < r1;) {
    const int64_t block_end = std::min((n0 / L.nb + 1) * L.nb, r1);
    Pair* block = reinterpret_cast<Pair*>(out + (n0 / L.nb) * L.Kp * L.nb);
    if (n0 % L.nb == 0 && (block_end % L.nb == 0 || block_end == L.N)) {
      // Whole block (or the last, shorter one): its rows as pair words, transposed.
      detail::pack_transposed(block, L.nb, w + n0 * ld, ld, block_end - n0, K2, true);
      if (L.K % 2)
        for (int64_t n = n0; n < block_end; ++n) out[L.offset(L.K - 1, n)] = w[n * ld + L.K - 1];
    } else {
      for (int64_t n = n0; n < block_end; ++n)
        for (int64_t k = 0; k < L.K; ++k) out[L.offset(k, n)] = w[n * ld + k];
    }
    n0 = block_end;
  }
}

void pack_b_rows(const PackedB& L, bf16* out, const bf16* w, int64_t ld, int64_t r0, int64_t r1) {
  // Row r of W is row k = r of B: pairs of rows (even, odd) interleave in every N block.
  int64_t k = r0;
  if (k % 2) {  // the odd row of a pair whose even row is outside the range
    for (int64_t n = 0; n < L.N; ++n) out[L.offset(k, n)] = w[k * ld + n];
    ++k;
  }
  const int64_t pairs_end = k + (r1 - k) / 2 * 2;
  for (int64_t n0 = 0; n0 < L.N && k < pairs_end; n0 += L.nb) {
    const int64_t cols = std::min(L.nb, L.N - n0);
    Pair* block = reinterpret_cast<Pair*>(out + (n0 / L.nb) * L.Kp * L.nb);
    detail::pack_interleaved(block + k / 2 * L.nb, L.nb, w + k * ld + n0, ld, (pairs_end - k) / 2, cols, true);
  }
  if (pairs_end < r1)  // an even row whose odd partner is outside the range (or past K)
    for (int64_t n = 0; n < L.N; ++n) out[L.offset(pairs_end, n)] = w[pairs_end * ld + n];
}

}  // namespace kumiko::cpu
