// cpu::matmul_bf16 (every implementation this build and this CPU have) against a
// double-precision product of the same bf16 inputs, for every transpose, beta 0 and 1,
// padded leading dimensions and sizes that are not multiples of any vector width; and
// cpu::matmul_bf16_out, the product with a bias or accumulated, in fp32 or rounded to bf16.
//
// Bound. Each product of two bf16 numbers is exact in fp32 (8 + 8 significant bits),
// so an implementation differs from the exact sum only by its fp32 additions: with
// u = 2^-24 and K + 1 terms (the K products and beta C), any summation order gives
// |C - exact| <= gamma_{K+1} (sum_k |a_ik b_kj| + |beta C_ij|), gamma_n = n u / (1 - n u)
// (Higham, Accuracy and Stability of Numerical Algorithms, 2nd ed., eq. 3.5).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <string>
#include <type_traits>
#include <vector>

#include "kernels/cpu/onednn/matmul_bf16_onednn.h"
#include "kumiko/core/bf16.h"
#include "kumiko/core/cpu_features.h"
#include "kumiko/core/error.h"
#include "kumiko/ops/matmul_bf16.h"
#include "tests/kernels/cpu/test_util.h"

namespace kumiko {
namespace {

using test::random_bf16;

void check(cpu::Bf16Gemm impl, bool ta, bool tb, int64_t M, int64_t N, int64_t K, float beta, int pad) {
  const int64_t lda = (ta ? M : K) + pad, ldb = (tb ? K : N) + pad, ldc = N + pad;
  const auto A = random_bf16(static_cast<size_t>((ta ? K : M) * lda), 1);
  const auto B = random_bf16(static_cast<size_t>((tb ? N : K) * ldb), 2);
  const auto C0 = test::random_vec<float>(static_cast<size_t>(M * ldc), 3);
  auto C = C0;
  cpu::matmul_bf16(impl, ta, tb, M, N, K, A.data(), lda, B.data(), ldb, beta, C.data(), ldc);
  const double u = std::ldexp(1.0, -24), gamma = (K + 1) * u / (1 - (K + 1) * u);
  int bad = 0;
  for (int64_t i = 0; i < M; ++i) {
    for (int64_t j = 0; j < N; ++j) {
      double exact = beta * C0[i * ldc + j], mag = std::abs(exact);
      for (int64_t k = 0; k < K; ++k) {
        const double a = static_cast<float>(ta ? A[k * lda + i] : A[i * lda + k]);
        const double b = static_cast<float>(tb ? B[j * ldb + k] : B[k * ldb + j]);
        exact += a * b;
        mag += std::abs(a * b);
      }
      if (std::abs(C[i * ldc + j] - exact) > gamma * mag && ++bad <= 5)
        ADD_FAILURE() << cpu::bf16_gemm_name(impl) << " ta=" << ta << " tb=" << tb << " beta=" << beta << " C[" << i
                      << "," << j << "] = " << C[i * ldc + j] << ", exact " << exact << ", bound " << gamma * mag;
    }
    // Padding columns are not part of C: untouched.
    for (int64_t j = N; j < ldc; ++j) ASSERT_EQ(C[i * ldc + j], C0[i * ldc + j]) << "padding written";
  }
  EXPECT_EQ(bad, 0) << cpu::bf16_gemm_name(impl) << ": " << bad << " elements out of bounds";
}

TEST(MatmulBf16, EveryImplementationMatchesTheExactProduct) {
  const auto impls = cpu::bf16_gemms_available();
  std::string names;
  for (auto g : impls) names += std::string(" ") + cpu::bf16_gemm_name(g);
  std::printf("bf16 GEMMs in this build and process:%s (auto picks %s)\n", names.c_str(),
              cpu::bf16_gemm_name(cpu::bf16_gemm_default()));
  for (auto g : impls)
    for (bool ta : {false, true})
      for (bool tb : {false, true})
        for (float beta : {0.0f, 1.0f}) {
          check(g, ta, tb, 37, 53, 129, beta, 0);
          check(g, ta, tb, 16, 64, 256, beta, 3);
        }
}

TEST(MatmulBf16, TheLinearLayersShapes) {
  // The three GEMMs of a linear layer at a model-like shape (N = 256 tokens, 96 -> 384).
  for (auto g : cpu::bf16_gemms_available()) {
    check(g, false, true, 256, 384, 96, 0.0f, 0);   // y = x W^T
    check(g, false, false, 256, 96, 384, 0.0f, 0);  // dx = dy W
    check(g, true, false, 384, 96, 256, 1.0f, 0);   // dW += dy^T x
  }
}

// matmul_bf16_out: the same product (+ a bf16 bias, or + C) in fp32 or rounded once to
// bf16. The fp32 sum is within the bound above; rounding it to nearest bf16 (8
// significant bits, unit roundoff 2^-8) adds at most 2^-8 of its magnitude.
double value(float x) { return x; }
double value(bf16 x) { return to_float(x); }

template <typename Out>
void check_out(cpu::Bf16Gemm impl, bool ta, bool tb, int64_t M, int64_t N, int64_t K, bool bias, bool accumulate,
               int pad) {
  const int64_t lda = (ta ? M : K) + pad, ldb = (tb ? K : N) + pad, ldc = N + pad;
  const auto A = random_bf16(static_cast<size_t>((ta ? K : M) * lda), 4);
  const auto B = random_bf16(static_cast<size_t>((tb ? N : K) * ldb), 5);
  const auto b = random_bf16(static_cast<size_t>(N), 6);
  std::vector<Out> C0(static_cast<size_t>(M * ldc));
  const auto c0 = random_bf16(C0.size(), 7);
  for (size_t i = 0; i < C0.size(); ++i) C0[i] = static_cast<Out>(c0[i]);
  auto C = C0;
  cpu::matmul_bf16_out(impl, ta, tb, M, N, K, A.data(), lda, B.data(), ldb, bias ? b.data() : nullptr, accumulate,
                       C.data(), ldc);
  const double u = std::ldexp(1.0, -24), gamma = (K + 1) * u / (1 - (K + 1) * u);
  const double rounding = std::is_same_v<Out, bf16> ? std::ldexp(1.0, -8) : 0.0;
  int bad = 0;
  for (int64_t i = 0; i < M; ++i) {
    for (int64_t j = 0; j < N; ++j) {
      double exact = accumulate ? value(C0[i * ldc + j]) : bias ? to_float(b[j]) : 0.0, mag = std::abs(exact);
      for (int64_t k = 0; k < K; ++k) {
        const double x = static_cast<float>(ta ? A[k * lda + i] : A[i * lda + k]);
        const double y = static_cast<float>(tb ? B[j * ldb + k] : B[k * ldb + j]);
        exact += x * y;
        mag += std::abs(x * y);
      }
      const double bound = gamma * mag + rounding * (std::abs(exact) + gamma * mag);
      const double got = value(C[i * ldc + j]);
      if (std::abs(got - exact) > bound && ++bad <= 5)
        ADD_FAILURE() << cpu::bf16_gemm_name(impl) << (rounding > 0 ? " bf16" : " fp32") << " ta=" << ta
                      << " tb=" << tb << " bias=" << bias << " accumulate=" << accumulate << " C[" << i << "," << j
                      << "] = " << got << ", exact " << exact << ", bound " << bound;
    }
    for (int64_t j = N; j < ldc; ++j) ASSERT_EQ(value(C[i * ldc + j]), value(C0[i * ldc + j])) << "padding written";
  }
  EXPECT_EQ(bad, 0) << cpu::bf16_gemm_name(impl) << ": " << bad << " elements out of bounds";
}

TEST(MatmulBf16, OutputsWithBiasOrAccumulation) {
  for (auto g : cpu::bf16_gemms_available())
    for (bool ta : {false, true})
      for (bool tb : {false, true})
        for (int mode = 0; mode < 3; ++mode) {
          check_out<bf16>(g, ta, tb, 37, 53, 129, mode == 1, mode == 2, 0);
          check_out<bf16>(g, ta, tb, 16, 64, 256, mode == 1, mode == 2, 3);
          check_out<float>(g, ta, tb, 37, 53, 129, mode == 1, mode == 2, 0);
        }
  // The linear layer's outputs: y = x W^T + b (bf16, or fp32 before a GELU), dx += dy W.
  for (auto g : cpu::bf16_gemms_available()) {
    check_out<bf16>(g, false, true, 256, 384, 96, true, false, 0);
    check_out<float>(g, false, true, 256, 384, 96, true, false, 0);
    check_out<bf16>(g, false, false, 256, 96, 384, false, true, 0);
  }
}

TEST(MatmulBf16, EmptySumsAndNamesAreHandled) {
  for (auto g : cpu::bf16_gemms_available()) {
    std::vector<float> c{1.5f, -2.0f};
    cpu::matmul_bf16(g, false, false, 1, 2, 0, nullptr, 1, nullptr, 2, 1.0f, c.data(), 2);
    EXPECT_EQ(c, (std::vector<float>{1.5f, -2.0f}));
    cpu::matmul_bf16(g, false, false, 1, 2, 0, nullptr, 1, nullptr, 2, 0.0f, c.data(), 2);
    EXPECT_EQ(c, (std::vector<float>{0.0f, 0.0f}));
    EXPECT_EQ(cpu::bf16_gemm_from_name(cpu::bf16_gemm_name(g)), g);
  }
  EXPECT_THROW(cpu::bf16_gemm_from_name("mkl"), UserError);
  // One this process lacks (Debian's OpenBLAS has no sbgemm; oneDNN needs AVX-512) is
  // refused by name, saying what it needs.
  const auto have = cpu::bf16_gemms_available();
  for (auto g : {cpu::Bf16Gemm::openblas, cpu::Bf16Gemm::onednn}) {
    if (std::find(have.begin(), have.end(), g) != have.end()) continue;
    try {
      cpu::bf16_gemm_from_name(cpu::bf16_gemm_name(g));
      ADD_FAILURE() << cpu::bf16_gemm_name(g) << " is not available here but was accepted";
    } catch (const UserError& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find("backend.bf16_gemm"), std::string::npos) << what;
      EXPECT_NE(what.find(cpu::bf16_gemm_name(g)), std::string::npos) << what;
    }
  }
}

TEST(MatmulBf16, OnednnScratchpadIsBoundedByChunkingRows) {
  if (!cpu::onednn::available()) GTEST_SKIP() << "no oneDNN bf16 matmul in this build or on this CPU";
  struct Shape {
    bool ta, tb;
    int64_t M, N, K;
    bool accumulate;
  };
  // A linear layer's three GEMMs (the weight gradient's transposed A is the one oneDNN
  // splits over K at many threads), and odd sizes (301 and 37 rows leave a shorter
  // last chunk).
  const Shape shapes[] = {{false, true, 512, 384, 96, false}, {false, false, 512, 96, 384, true},
                          {true, false, 384, 96, 512, true},  {true, false, 301, 67, 1029, true},
                          {false, true, 37, 53, 129, false}};
  // Each shape, in fp32 and in bf16 (with a bias where there is no accumulation), with
  // dense and padded strides: what a one-byte budget does to it, from what oneDNN says.
  struct Run {
    const Shape* s;
    int pad;
    bool bf16_out;
  };
  std::vector<Run> runs;
  for (const Shape& s : shapes)
    for (const int pad : {0, 5})
      for (const bool bf16_out : {false, true}) runs.push_back({&s, pad, bf16_out});
  auto chunking = [](const Run& r) {
    const Shape& s = *r.s;
    const int64_t lda = (s.ta ? s.M : s.K) + r.pad, ldb = (s.tb ? s.K : s.N) + r.pad, ldc = s.N + r.pad;
    return cpu::onednn::chunking(s.ta, s.tb, s.M, s.N, s.K, lda, ldb, ldc, r.bf16_out && !s.accumulate,
                                 s.accumulate, r.bf16_out);
  };
  // A GEMM with a scratchpad under the default budget is split under a one-byte one
  // (down to one row where no chunk runs without one).
  int with_scratchpad = 0;
  for (const Run& r : runs) with_scratchpad += chunking(r).scratchpad > 0;
  cpu::onednn::set_scratchpad_budget(1);
  size_t expected = 0;
  int split = 0;
  for (const Run& r : runs) {
    const Shape& s = *r.s;
    const auto c = chunking(r);
    std::printf("M%ld N%ld K%ld %c%c pad %d %s: %ld rows per call, scratchpad %zu bytes\n", static_cast<long>(s.M),
                static_cast<long>(s.N), static_cast<long>(s.K), s.ta ? 'T' : 'N', s.tb ? 'T' : 'N', r.pad,
                r.bf16_out ? "bf16" : "fp32", static_cast<long>(c.rows), c.scratchpad);
    split += c.rows > 0 && c.rows < s.M;
    // Chunks of rows: the same product within the bound of any summation order (and
    // of the one rounding to bf16); the bias and C's rows offset chunk by chunk.
    if (r.bf16_out)
      check_out<bf16>(cpu::Bf16Gemm::onednn, s.ta, s.tb, s.M, s.N, s.K, !s.accumulate, s.accumulate, r.pad);
    else
      check(cpu::Bf16Gemm::onednn, s.ta, s.tb, s.M, s.N, s.K, s.accumulate ? 1.0f : 0.0f, r.pad);
    // The shared buffer is what the GEMMs run so far needed, no more.
    expected = std::max(expected, c.scratchpad);
    EXPECT_EQ(cpu::onednn::scratchpad_in_use(), expected);
  }
  cpu::onednn::set_scratchpad_budget(cpu::onednn::kDefaultScratchpadBudget);
  std::printf("%d of %zu GEMMs have a scratchpad here; %d ran in chunks\n", with_scratchpad, runs.size(), split);
  EXPECT_GE(split, with_scratchpad) << "a GEMM with a scratchpad was not split under a one-byte budget";
  if (with_scratchpad == 0) std::printf("(no GEMM here has a scratchpad: oneDNN's kernels for this CPU need none)\n");
}

// kumiko bench gemm and the bf16 log line name the kernels oneDNN runs: its AMX ones
// exactly where this process may use the tiles, its AVX512-BF16 ones where the CPU has
// bf16 dot products and no usable tiles. (The AMX VM of docs/performance.md ran 238
// GFLOP/s per thread, an AVX512-BF16 rate, and nothing said which kernels those were.)
TEST(MatmulBf16, OnednnNamesTheKernelsItRuns) {
  const std::string emulated = cpu::bf16_gemm_kernels(cpu::Bf16Gemm::emulated);
  EXPECT_EQ(emulated.rfind("OpenBLAS sgemm on fp32 copies, ", 0), 0u) << emulated;
  EXPECT_EQ(emulated.find(", ? kernels"), std::string::npos) << emulated;  // the core name was found
  const std::string name = cpu::onednn::kernel_name();
  EXPECT_EQ(cpu::onednn_unavailable_reason().empty(), cpu::onednn::available()) << cpu::onednn_unavailable_reason();
  if (!cpu::onednn::available()) {
    EXPECT_EQ(name, "");
    GTEST_SKIP() << "no oneDNN bf16 matmul in this build or on this CPU";
  }
  const CpuFeatures f = cpu_features();
  std::printf("oneDNN runs %s; this CPU: %s\n", name.c_str(), f.describe().c_str());
  EXPECT_EQ(cpu::bf16_gemm_kernels(cpu::Bf16Gemm::onednn), "oneDNN " + name);
  if (std::getenv("ONEDNN_MAX_CPU_ISA") || std::getenv("DNNL_MAX_CPU_ISA"))
    GTEST_SKIP() << "oneDNN's instruction sets are capped by the environment: it runs " << name;
  const bool tiles = f.bf16_tiles && f.tiles_unusable.empty();
  EXPECT_EQ(name.find("amx") != std::string::npos, tiles)
      << "oneDNN runs " << name << " on a CPU with " << f.describe();
  if (!tiles && f.bf16_dot) {
    EXPECT_EQ(name, "brg:avx512_core_bf16") << f.describe();
  }
  if (!f.bf16_dot && !f.bf16_tiles) {
    EXPECT_EQ(name.find("bf16"), std::string::npos) << name;
  }
  // The reason is given only for tiles cpuid reports.
  if (!f.bf16_tiles) {
    EXPECT_EQ(f.tiles_unusable, "");
  }
}

TEST(MatmulBf16, OpenblasAmxSbgemmBefore0324IsRefused) {
  // openblas_get_config() / openblas_get_corename() as OpenBLAS writes them (a TARGET
  // build says SAPPHIRERAPIDS, a DYNAMIC_ARCH one Sapphirerapids).
  const std::string v0321 = "OpenBLAS 0.3.21  NO_AFFINITY USE_OPENMP SAPPHIRERAPIDS MAX_THREADS=256";
  const std::string refused = cpu::openblas_sbgemm_defect(v0321, "SAPPHIRERAPIDS");
  EXPECT_NE(refused.find("0.3.21"), std::string::npos) << refused;
  EXPECT_NE(refused.find("COOPERLAKE"), std::string::npos) << refused;
  EXPECT_NE(cpu::openblas_sbgemm_defect("OpenBLAS 0.3.23.dev DYNAMIC_ARCH", "Sapphirerapids"), "");
  // A version that cannot be read is not taken for a fixed one.
  EXPECT_NE(cpu::openblas_sbgemm_defect("OpenBLAS develop", "SAPPHIRERAPIDS"), "");
  // The fixed releases, and every other kernel family of the broken ones, are kept.
  EXPECT_EQ(cpu::openblas_sbgemm_defect("OpenBLAS 0.3.24 USE_OPENMP", "SAPPHIRERAPIDS"), "");
  EXPECT_EQ(cpu::openblas_sbgemm_defect("OpenBLAS 0.3.29.dev DYNAMIC_ARCH", "Sapphirerapids"), "");
  EXPECT_EQ(cpu::openblas_sbgemm_defect("OpenBLAS 0.4.0", "SAPPHIRERAPIDS"), "");
  EXPECT_EQ(cpu::openblas_sbgemm_defect(v0321, "COOPERLAKE"), "");
  EXPECT_EQ(cpu::openblas_sbgemm_defect(v0321, "Zen"), "");
  // The sbgemm this process has, if any, is one that is not refused.
  const auto have = cpu::bf16_gemms_available();
  const bool has_openblas = std::find(have.begin(), have.end(), cpu::Bf16Gemm::openblas) != have.end();
  EXPECT_EQ(has_openblas, cpu::sbgemm_unavailable_reason().empty()) << cpu::sbgemm_unavailable_reason();
}

}  // namespace
}  // namespace kumiko
