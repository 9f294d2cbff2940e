// kumiko::cuda::gemm and the cuBLASLt path (CublasLt::gemm), both run through the same
// checks, and bias_backward.
// GEMM: every layout (NT, NN, TN) and type pair (<float, float>, <bf16, bf16>,
// <bf16, float>), against a double triple-loop reference on the inputs as the GPU sees
// them (bf16-rounded where bf16). Sizes: tile-aligned (256x384x128: bf16 cp.async path
// with no edges), 8-aligned with edges (200x136x72: cp.async path with zero-filled
// chunks, fp32 float4 path), odd (37x50x19, 129x65x33, 1x7x300: element-wise paths) and
// K = 0. Epilogues: none, bias, bias_gelu with and without `pre` (checked too), and
// accumulate onto random C with none and bias. Outputs start poisoned (NaN).
// bias_backward: odd N and C, accumulation onto a random dbias, bitwise determinism.
// The two bf16 kernels side by side: the mma.sync kernel (what gemm runs on aligned
// operands) against the WMMA kernel (gemm_wmma), each against the reference and each other.
#include <algorithm>
#include <cstddef>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "kernels/cpu/reference/activations.h"
#include "kernels/cuda/cublaslt.cuh"
#include "kernels/cuda/gemm.cuh"
#include "kernels/cuda/gemm_mma.cuh"
#include "kernels/cuda/linear.cuh"
#include "tests/kernels/cpu/test_util.h"
#include "tests/support/gpu_test.h"

namespace kumiko::cuda {
namespace {

using test::as_seen;
using test::DeviceBuffer;
using test::DeviceBytes;
using test::expect_bitwise_equal;
using test::expect_close;
using test::OffsetBuffer;
using test::random_vec;

enum class Impl { kumiko, cublas };

const char* layout_name(Layout l) { return l == Layout::NT ? "NT" : l == Layout::NN ? "NN" : "TN"; }

struct Shape {
  int64_t M, N, K;
};

// P[m, n] = sum_k op(A)[m, k] op(B)[k, n] in double, with the stored layouts of gemm.cuh.
std::vector<double> product(Layout l, const Shape& s, const std::vector<float>& A, const std::vector<float>& B) {
  const int64_t M = s.M, N = s.N, K = s.K;
  std::vector<double> P(size_t(M * N), 0.0);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t k = 0; k < K; ++k) {
      const double a = l == Layout::TN ? A[size_t(k * M + m)] : A[size_t(m * K + k)];
      for (int64_t n = 0; n < N; ++n) {
        const double b = l == Layout::NT ? B[size_t(n * K + k)] : B[size_t(k * N + n)];
        P[size_t(m * N + n)] += a * b;
      }
    }
  return P;
}

// A device copy of `host` (no buffer at all for an empty vector).
template <typename T>
std::unique_ptr<DeviceBuffer<T>> device(const std::vector<float>& host) {
  return host.empty() ? nullptr : std::make_unique<DeviceBuffer<T>>(host);
}
template <typename T>
T* ptr(const std::unique_ptr<DeviceBuffer<T>>& b) {
  return b ? b->get() : nullptr;
}

class Gemm : public ::testing::TestWithParam<Impl> {
 protected:
  template <typename Tin, typename Tout>
  void run(const GemmArgs& args, const Tin* A, const Tin* B, Tout* C, const Tin* bias, Tout* pre) {
    if (GetParam() == Impl::kumiko) {
      gemm<Tin, Tout>(args, A, B, C, bias, pre, cudaStream_t{});
    } else {
      if (!lt_) lt_ = std::make_unique<CublasLt>();
      lt_->gemm<Tin, Tout>(args, A, B, C, bias, pre, cudaStream_t{});
    }
  }

  // Every layout, shape and epilogue case for one type pair, within rtol.
  template <typename Tin, typename Tout>
  void check_all(double rtol) {
    struct Case {
      Epilogue epi;
      bool accumulate, with_pre;
      const char* name;
    };
    const Case cases[] = {{Epilogue::none, false, false, "none"},
                          {Epilogue::none, true, false, "none+C"},
                          {Epilogue::bias, false, false, "bias"},
                          {Epilogue::bias, true, false, "bias+C"},
                          {Epilogue::bias_gelu, false, true, "bias_gelu+pre"},
                          {Epilogue::bias_gelu, false, false, "bias_gelu"}};
    const Shape shapes[] = {{256, 384, 128}, {200, 136, 72}, {37, 50, 19}, {129, 65, 33}, {1, 7, 300}, {5, 9, 0}};
    uint32_t seed = 1000;
    for (Layout layout : {Layout::NT, Layout::NN, Layout::TN}) {
      for (const Shape& s : shapes) {
        const size_t MN = size_t(s.M * s.N);
        const auto A = as_seen<Tin>(random_vec(size_t(s.M * s.K), ++seed));
        const auto B = as_seen<Tin>(random_vec(size_t(s.K * s.N), ++seed));
        const auto bias = as_seen<Tin>(random_vec(size_t(s.N), ++seed));
        const auto C0 = as_seen<Tout>(random_vec(MN, ++seed));
        const auto P = product(layout, s, A, B);
        const auto dA = device<Tin>(A), dB = device<Tin>(B);
        DeviceBuffer<Tin> dbias(bias);
        for (const Case& c : cases) {
          const std::string what = std::string(layout_name(layout)) + " M=" + std::to_string(s.M) +
                                   " N=" + std::to_string(s.N) + " K=" + std::to_string(s.K) + " " + c.name;
          DeviceBuffer<Tout> dC(MN), dpre(MN);  // poisoned
          if (c.accumulate) dC.upload(C0);
          const GemmArgs args{layout, s.M, s.N, s.K, c.accumulate, c.epi};
          run<Tin, Tout>(args, ptr(dA), ptr(dB), dC.get(), c.epi == Epilogue::none ? nullptr : dbias.get(),
                         c.with_pre ? dpre.get() : nullptr);
          std::vector<double> pre_ref(MN);
          for (int64_t m = 0; m < s.M; ++m)
            for (int64_t n = 0; n < s.N; ++n) {
              const size_t i = size_t(m * s.N + n);
              double v = P[i];
              if (c.accumulate) v += C0[i];
              if (c.epi != Epilogue::none) v += bias[size_t(n)];
              pre_ref[i] = v;
            }
          std::vector<double> ref = pre_ref;
          if (c.epi == Epilogue::bias_gelu) cpu::reference::gelu_forward(ref.data(), pre_ref.data(), int64_t(MN));
          const auto got = dC.download();
          if (s.K == 0 && c.epi == Epilogue::none && !c.accumulate) {  // ref all 0: no scale to be relative to
            EXPECT_EQ(std::count(got.begin(), got.end(), 0.0f), std::ptrdiff_t(MN)) << what;
          } else {
            expect_close(got, ref, rtol, what);
          }
          if (c.with_pre) expect_close(dpre.download(), pre_ref, rtol, what + " pre");
        }
      }
    }
  }

  // Two identical calls give bitwise identical outputs.
  template <typename Tin, typename Tout>
  void check_determinism(Layout layout, const Shape& s) {
    const auto A = as_seen<Tin>(random_vec(size_t(s.M * s.K), 77));
    const auto B = as_seen<Tin>(random_vec(size_t(s.K * s.N), 78));
    const auto bias = as_seen<Tin>(random_vec(size_t(s.N), 79));
    const auto C0 = as_seen<Tout>(random_vec(size_t(s.M * s.N), 80));
    DeviceBuffer<Tin> dA(A), dB(B), dbias(bias);
    std::vector<float> out[2];
    for (auto& o : out) {
      DeviceBuffer<Tout> dC(C0);
      run<Tin, Tout>(GemmArgs{layout, s.M, s.N, s.K, true, Epilogue::bias}, dA.get(), dB.get(), dC.get(),
                     dbias.get(), nullptr);
      o = dC.download();
    }
    expect_bitwise_equal(out[0], out[1], std::string("gemm ") + layout_name(layout) + " M=" + std::to_string(s.M));
  }

 private:
  std::unique_ptr<CublasLt> lt_;
};

// fp32: exact fp32 products, fp32 sums over K <= 384 terms: ~1e-6 relative error.
TEST_P(Gemm, FloatFloat) {
  KUMIKO_REQUIRE_GPU();
  check_all<float, float>(1e-5);
}

// bf16 output: one rounding to 8 significant bits (2^-9 relative) dominates.
TEST_P(Gemm, Bf16Bf16) {
  KUMIKO_REQUIRE_GPU();
  check_all<bf16, bf16>(1e-2);
}

// bf16 inputs are exact in the reference and their products exact in fp32; what is
// left is fp32 accumulation (~1e-6): the fp32 bound, far below any bf16 rounding of the
// output or of an intermediate (~4e-3).
TEST_P(Gemm, Bf16Float) {
  KUMIKO_REQUIRE_GPU();
  check_all<bf16, float>(1e-5);
}

TEST_P(Gemm, Deterministic) {
  KUMIKO_REQUIRE_GPU();
  for (Layout layout : {Layout::NT, Layout::NN, Layout::TN}) {
    for (const Shape& s : {Shape{256, 384, 128}, Shape{129, 65, 33}}) {
      check_determinism<float, float>(layout, s);
      check_determinism<bf16, bf16>(layout, s);
      check_determinism<bf16, float>(layout, s);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Impls, Gemm, ::testing::Values(Impl::kumiko, Impl::cublas),
                         [](const ::testing::TestParamInfo<Impl>& p) {
                           return std::string(p.param == Impl::kumiko ? "kumiko" : "cublas");
                         });

// The mma.sync kernel against the WMMA kernel. Both sum in fp32 but in different orders, so
// they agree to fp32 rounding (and bf16 outputs to one bf16 rounding), not bitwise: each is
// checked against the double reference and the two against each other, within rtol.
// Shapes: 384x256x200 in every layout (three block rows, two block columns, 7 k-tiles: the
// 4-stage pipeline wraps, and the last k-tile is ragged) and, in NT (the only layout whose
// eligibility leaves N free), 130x45x72: an odd N, which the mma kernel finishes element by
// element, and a two-row last block row; TN 136x72x45: a K that is not a multiple of 8 (TN
// leaves K free; the k-rows past K are zero-filled one by one in both operands); NN
// 45x136x40: an odd M (NN leaves M free). Also through gemm with C one element off its
// alignment: gemm then falls back to the WMMA kernel's cp.async path, which it otherwise no
// longer takes.
template <typename Tout>
void check_mma_against_wmma(double rtol) {
  struct Case {
    Layout layout;
    Shape s;
  };
  const Case cases[] = {{Layout::NT, {384, 256, 200}},
                        {Layout::NN, {384, 256, 200}},
                        {Layout::TN, {384, 256, 200}},
                        {Layout::NT, {130, 45, 72}},
                        {Layout::TN, {136, 72, 45}},
                        {Layout::NN, {45, 136, 40}}};
  struct Epi {
    Epilogue epi;
    bool accumulate;
    const char* name;
  };
  const Epi epis[] = {{Epilogue::none, true, "none+C"},
                      {Epilogue::bias, false, "bias"},
                      {Epilogue::bias_gelu, false, "bias_gelu+pre"}};
  uint32_t seed = 5000;
  for (const Case& c : cases) {
    const Shape& s = c.s;
    const size_t MN = size_t(s.M * s.N);
    const auto A = as_seen<bf16>(random_vec(size_t(s.M * s.K), ++seed));
    const auto B = as_seen<bf16>(random_vec(size_t(s.K * s.N), ++seed));
    const auto bias = as_seen<bf16>(random_vec(size_t(s.N), ++seed));
    const auto C0 = as_seen<Tout>(random_vec(MN, ++seed));
    const auto P = product(c.layout, s, A, B);
    DeviceBuffer<bf16> dA(A), dB(B), dbias(bias);
    for (const Epi& e : epis) {
      const std::string what = std::string(layout_name(c.layout)) + " M=" + std::to_string(s.M) +
                               " N=" + std::to_string(s.N) + " K=" + std::to_string(s.K) + " " +
                               e.name;
      std::vector<double> pre_ref(MN);
      for (int64_t m = 0; m < s.M; ++m)
        for (int64_t n = 0; n < s.N; ++n) {
          const size_t i = size_t(m * s.N + n);
          double v = P[i];
          if (e.accumulate) v += C0[i];
          if (e.epi != Epilogue::none) v += bias[size_t(n)];
          pre_ref[i] = v;
        }
      std::vector<double> ref = pre_ref;
      if (e.epi == Epilogue::bias_gelu)
        cpu::reference::gelu_forward(ref.data(), pre_ref.data(), int64_t(MN));

      const GemmArgs args{c.layout, s.M, s.N, s.K, e.accumulate, e.epi};
      const bf16* b = e.epi == Epilogue::none ? nullptr : dbias.get();
      const bool with_pre = e.epi == Epilogue::bias_gelu;
      DeviceBuffer<Tout> dC_mma(MN), dpre_mma(MN), dC_wmma(MN), dpre_wmma(MN);  // poisoned
      if (e.accumulate) {
        dC_mma.upload(C0);
        dC_wmma.upload(C0);
      }
      Tout* const pre_mma = with_pre ? dpre_mma.get() : nullptr;
      Tout* const pre_wmma = with_pre ? dpre_wmma.get() : nullptr;
      ASSERT_TRUE(gemm_mma_supported<Tout>(args, dA.get(), dB.get(), dC_mma.get(), b, pre_mma))
          << what;
      gemm<bf16, Tout>(args, dA.get(), dB.get(), dC_mma.get(), b, pre_mma, cudaStream_t{});
      gemm_wmma<Tout>(args, dA.get(), dB.get(), dC_wmma.get(), b, pre_wmma, cudaStream_t{});
      const auto got_mma = dC_mma.download();
      const auto got_wmma = dC_wmma.download();
      expect_close(got_mma, ref, rtol, what + " mma");
      expect_close(got_wmma, ref, rtol, what + " wmma");
      expect_close(got_mma, got_wmma, rtol, what + " mma vs wmma");
      if (with_pre) {
        const auto pre_got_mma = dpre_mma.download();
        const auto pre_got_wmma = dpre_wmma.download();
        expect_close(pre_got_mma, pre_ref, rtol, what + " mma pre");
        expect_close(pre_got_wmma, pre_ref, rtol, what + " wmma pre");
        expect_close(pre_got_mma, pre_got_wmma, rtol, what + " mma vs wmma pre");
      }

      auto dC_off = e.accumulate ? OffsetBuffer<Tout>(C0, 1) : OffsetBuffer<Tout>(MN, 1);
      ASSERT_FALSE(gemm_mma_supported<Tout>(args, dA.get(), dB.get(), dC_off.get(), b, nullptr))
          << what;
      gemm<bf16, Tout>(args, dA.get(), dB.get(), dC_off.get(), b, nullptr, cudaStream_t{});
      expect_close(dC_off.download(), ref, rtol, what + " misaligned C (wmma)");
    }
  }
}

// Tolerances as Gemm.Bf16Bf16 and Gemm.Bf16Float (K = 200 fp32 sums: ~1e-6 relative).
TEST(CudaGemmKernels, MmaMatchesWmmaBf16) {
  KUMIKO_REQUIRE_GPU();
  check_mma_against_wmma<bf16>(1e-2);
}

TEST(CudaGemmKernels, MmaMatchesWmmaFloat) {
  KUMIKO_REQUIRE_GPU();
  check_mma_against_wmma<float>(1e-5);
}

// dbias (random start) += column sums of dy; returns dbias.
template <typename T>
std::vector<float> run_bias_backward(const std::vector<float>& dy, const std::vector<float>& dbias0, int64_t N,
                                     int64_t C) {
  DeviceBuffer<T> ddy(dy);
  DeviceBuffer<float> ddb(dbias0);
  DeviceBytes ws(bias_backward_workspace_bytes(N, C));
  bias_backward<T>(ddb.get(), ddy.get(), N, C, ws.get(), cudaStream_t{});
  return ddb.download();
}

template <typename T>
void check_bias_backward(int64_t N, int64_t C) {
  const auto dy = as_seen<T>(random_vec(size_t(N * C), 300 + uint32_t(N)));
  const auto dbias0 = random_vec(size_t(C), 400 + uint32_t(C));
  const auto got = run_bias_backward<T>(dy, dbias0, N, C);
  std::vector<double> ref(dbias0.begin(), dbias0.end());
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c) ref[size_t(c)] += dy[size_t(n * C + c)];
  const std::string what = "bias_backward N=" + std::to_string(N) + " C=" + std::to_string(C);
  // fp32 sums of up to 4096 exact inputs (bf16 ones included): ~1e-6 relative.
  expect_close(got, ref, 1e-5, what);
  expect_bitwise_equal(got, run_bias_backward<T>(dy, dbias0, N, C), what + " determinism");
}

// (rows N, columns C): one chunk, a single row, several chunks, many, one column.
const std::vector<std::pair<int64_t, int64_t>> kBiasShapes = {{37, 100}, {1, 7}, {1000, 77}, {4096, 256}, {130, 1}};

TEST(CudaBiasBackward, Float) {
  KUMIKO_REQUIRE_GPU();
  for (auto [N, C] : kBiasShapes) check_bias_backward<float>(N, C);
}

TEST(CudaBiasBackward, Bf16) {
  KUMIKO_REQUIRE_GPU();
  for (auto [N, C] : kBiasShapes) check_bias_backward<bf16>(N, C);
}

}  // namespace
}  // namespace kumiko::cuda
