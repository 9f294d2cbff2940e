// The bf16-pair GEMM (kernels/cpu/bf16_dot.h) against a double product, and attention on
// it against attention's fp32 kernel. The GEMM is vdpbf16ps on CPUs with AVX512-BF16 and
// a plain loop elsewhere; both are checked here through the same layout.
// Bounds: a product of two bf16 is exact in fp32, so a sum of 2 K2 of them in fp32 is off
// by at most gamma_{2 K2 + 1} = (2 K2 + 1) u / (1 - (2 K2 + 1) u), u = 2^-24, of the sum
// of |terms| (plus alpha and the old C: +2 roundings). A pair (hi, lo) = split(x) carries
// x to |x - hi - lo| <= 2^-16 |x| (bf16 has 8 significant bits: |x - hi| <= 2^-8 |x|, and
// lo rounds x - hi to 2^-8 of itself).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "kernels/cpu/attention_tiles.h"
#include "kernels/cpu/bf16_dot.h"
#include "kumiko/core/bf16.h"
#include "kumiko/ops/attention.h"
#include "tests/kernels/cpu/test_util.h"

namespace kumiko::cpu {
namespace {

using detail::Pair;

using test::random_bf16;

double gamma(int64_t n) {
  const double nu = static_cast<double>(n) * std::ldexp(1.0, -24);
  return nu / (1.0 - nu);
}

TEST(Bf16Dot, SplitCarriesFp32To2PowMinus16) {
  const auto x = test::random_vec(4096, 41, 3.0);
  for (float v : x) {
    const uint32_t w = detail::split(v);
    const double hi = to_float(bf16{static_cast<uint16_t>(w & 0xffffu)});
    const double lo = to_float(bf16{static_cast<uint16_t>(w >> 16)});
    ASSERT_LE(std::abs(double(v) - hi - lo), std::ldexp(std::abs(double(v)), -16)) << v;
    ASSERT_EQ(to_bf16(v).bits, static_cast<uint16_t>(w & 0xffffu)) << "hi is bf16(x)";
  }
}

// pack_transposed word for word against its definition, over row and word tails (n and
// K2 not multiples of 16, one word deep, one row), padded rows (ld > 2 K2) and a wider B
// (ldb > round16(n)): columns [n, round16(n)) zero, columns past them untouched.
TEST(Bf16Dot, PackTransposedIsTheTranspose) {
  struct Shape { int64_t n, K2, ld, ldb; };
  for (const Shape sh : {Shape{1, 1, 2, 16}, Shape{16, 16, 32, 16}, Shape{37, 13, 30, 48},
                         Shape{64, 32, 64, 64}, Shape{50, 36, 76, 80}, Shape{15, 8, 16, 16}}) {
    const auto x = random_bf16(size_t(sh.n * sh.ld), 47);
    const uint32_t junk = 0xdeadbeefu;
    std::vector<uint32_t> b(size_t(sh.K2 * sh.ldb), junk);
    detail::pack_transposed(b.data(), sh.ldb, x.data(), sh.ld, sh.n, sh.K2);
    for (int64_t p = 0; p < sh.K2; ++p)
      for (int64_t j = 0; j < sh.ldb; ++j) {
        uint32_t want = junk;
        if (j < sh.n) {
          want = uint32_t{x[size_t(j * sh.ld + 2 * p)].bits} | (uint32_t{x[size_t(j * sh.ld + 2 * p + 1)].bits} << 16);
        } else if (j < detail::round16(sh.n)) {
          want = 0;
        }
        ASSERT_EQ(b[size_t(p * sh.ldb + j)], want)
            << "n " << sh.n << " K2 " << sh.K2 << ": word " << p << ", column " << j;
      }
  }
}

// C = alpha Xᵀ-packed product and the split / dup product, with row and column tails
// (M = 7, N = 37 over 64-column panels and 16-column groups), accumulating or not.
TEST(Bf16Dot, GemmMatchesADoubleProduct) {
  const int64_t M = 7, N = 37, K2 = 13, K = 2 * K2, ldc = 40, ldb = detail::round16(N);
  const float alpha = 0.75f;
  const auto a = random_bf16(size_t(M * K), 42), x = random_bf16(size_t(N * K), 43);
  for (bool accumulate : {false, true}) {
    // A [M, K] as rows of pairs; B = Xᵀ for X [N, K].
    std::vector<uint32_t> bp(size_t(K2 * ldb), 0xdeadbeefu);
    detail::pack_transposed(bp.data(), ldb, x.data(), K, N, K2);
    auto c = test::random_vec(size_t(M * ldc), 44);
    const auto c0 = c;
    detail::dpbf16_gemm(M, N, K2, alpha, detail::as_pairs(a.data()), K2, bp.data(), ldb,
                        accumulate, c.data(), ldc);
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < ldc; ++n) {
        const size_t i = size_t(m * ldc + n);
        if (n >= N) {
          ASSERT_EQ(c[i], c0[i]) << "column " << n << " past N written";
          continue;
        }
        double want = 0, mag = 0;
        for (int64_t k = 0; k < K; ++k) {
          const double t = double(to_float(a[size_t(m * K + k)])) * to_float(x[size_t(n * K + k)]);
          want += t;
          mag += std::abs(t);
        }
        want *= alpha;
        mag *= alpha;
        if (accumulate) {
          want += c0[i];
          mag += std::abs(c0[i]);
        }
        ASSERT_NEAR(c[i], want, gamma(K + 2) * mag) << "C[" << m << ", " << n << "]";
      }
  }
  // A = split(fp32 values) [M, K], B = X [K, N] each element twice.
  const auto af = test::random_vec(size_t(M * K), 45);
  std::vector<uint32_t> ap(af.size());
  for (size_t i = 0; i < af.size(); ++i) ap[i] = detail::split(af[i]);
  const auto xk = random_bf16(size_t(K * N), 46);
  std::vector<uint32_t> bd(size_t(K * ldb), 0xdeadbeefu);
  detail::pack_dup(bd.data(), ldb, xk.data(), N, K, N);
  std::vector<float> c(size_t(M * ldc), 0.0f);
  detail::dpbf16_gemm(M, N, K, 1.0f, ap.data(), K, bd.data(), ldb, false, c.data(), ldc);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double want = 0, mag = 0;
      for (int64_t k = 0; k < K; ++k) {
        const double t = double(af[size_t(m * K + k)]) * to_float(xk[size_t(k * N + n)]);
        want += t;
        mag += std::abs(t);
      }
      ASSERT_NEAR(c[size_t(m * ldc + n)], want, (std::ldexp(1.0, -16) + gamma(2 * K + 2)) * mag)
          << "split C[" << m << ", " << n << "]";
    }
}

}  // namespace
}  // namespace kumiko::cpu
