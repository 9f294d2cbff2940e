// CUDA layernorm and rmsnorm against kumiko::cpu in double: forward output and saved
// statistics; backward dx accumulated onto a random dx, dw (and db) accumulated onto
// random values; and bitwise determinism of the backward over two runs. The shapes
// cover the warp-per-row path (C <= 1024) and the block-per-row path, the 16-byte
// vector and the element-wise variants (C not a multiple of the vector, or arrays
// starting one element off alignment), chunks of several rows (large N), and a row
// wide enough to need the shared-memory opt-in (C = 12800).
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "kernels/cuda/layernorm.cuh"
#include "kernels/cuda/rmsnorm.cuh"
#include "kumiko/ops/layernorm.h"
#include "kumiko/ops/rmsnorm.h"
#include "tests/kernels/cpu/test_util.h"
#include "tests/support/gpu_test.h"

namespace kumiko::cuda {
namespace {

using test::as_seen;
using test::cast_vec;
using test::DeviceBuffer;
using test::DeviceBytes;
using test::expect_bitwise_equal;
using test::expect_close;
using test::OffsetBuffer;
using test::out_tol;
using test::random_vec;

struct Shape {
  int64_t N, C;
  size_t off;
};

std::string name(const char* op, const Shape& s) {
  return std::string(op) + " N=" + std::to_string(s.N) + " C=" + std::to_string(s.C) +
         " off=" + std::to_string(s.off);
}

const std::vector<Shape>& shapes() {
  static const std::vector<Shape> s = {
      {37, 100, 0},    // warp path; vector for float (100 % 4 == 0), element-wise for bf16
      {9, 2, 0},       // narrowest row
      {7, 3, 0},       // odd C
      {64, 768, 0},    // warp path, vector
      {64, 768, 1},    // warp path, misaligned: element-wise
      {5000, 64, 0},   // 5 rows per backward chunk
      {33, 1025, 0},   // block path, element-wise
      {600, 1536, 0},  // block path, vector, 4 rows per chunk
      {16, 4096, 0},   // block path, vector
      {16, 4096, 3},   // block path, misaligned
      {5, 12800, 0},   // block path beyond 48 KiB of shared memory
  };
  return s;
}

// Tolerances: outputs within out_tol<T>(): fp32 outputs are a few roundings from the
// double reference (sums of at most 12800 terms, tree-reduced, stay far below 1e-5
// relative); a bf16 output is rounded once to 8 bits (2^-9 relative). Statistics and
// weight gradients are fp32 in both precisions, computed from the same (bf16-exact)
// inputs as the reference.
constexpr double kStatTol = 1e-5;
// dw/db: fp32 sums over up to 5000 rows (in chunks of a few rows, then over chunks);
// the rounding error grows with the row count, so allow 2e-5.
constexpr double kParamTol = 2e-5;

// ---- layernorm -----------------------------------------------------------------------

template <typename T>
void check_layernorm(const Shape& s, uint32_t seed) {
  const int64_t N = s.N, C = s.C;
  const size_t NC = size_t(N * C), rows = size_t(N);
  const float eps = 1e-5f;
  // Mean 2 against spread 1: a one-pass variance would lose digits here. Rows of 2 or 3
  // elements get mean 0: their spread is itself random, and a row whose spread is tiny
  // against its mean amplifies the (correct) rounding of the mean by mean / spread.
  const auto x = as_seen<T>(random_vec(NC, seed, 1.0, C >= 64 ? 2.0 : 0.0));
  const auto w = as_seen<T>(random_vec(size_t(C), seed + 1, 0.5, 1.0));
  const auto b = as_seen<T>(random_vec(size_t(C), seed + 2));
  const auto dout = as_seen<T>(random_vec(NC, seed + 3));
  const auto dx0 = as_seen<T>(random_vec(NC, seed + 4));
  const auto dw0 = random_vec(size_t(C), seed + 5), db0 = random_vec(size_t(C), seed + 6);

  OffsetBuffer<T> d_x(x, s.off), d_w(w, s.off), d_b(b, s.off), d_dout(dout, s.off),
      d_out(NC, s.off);
  DeviceBuffer<float> d_mean(rows), d_rstd(rows);
  layernorm_forward<T>(d_out.get(), d_mean.get(), d_rstd.get(), d_x.get(), d_w.get(), d_b.get(), N,
                       C, eps, cudaStream_t{});

  const auto xd = cast_vec<double>(x), wd = cast_vec<double>(w), bd = cast_vec<double>(b);
  std::vector<double> out_r(NC), mean_r(rows), rstd_r(rows);
  cpu::layernorm_forward<double>(out_r.data(), mean_r.data(), rstd_r.data(), xd.data(), wd.data(),
                                 bd.data(), N, C, double(eps));
  const std::string what = name("layernorm", s);
  // Even at mean 0, a 2- or 3-element row with a spread near 1e-3 loses ~1e-5 of its
  // variance, xhat and dx (whose scale is rstd) to the rounding of the mean: allow 1e-4.
  const bool tiny = C < 8;
  const double tol = tiny && std::is_same_v<T, float> ? 1e-4 : out_tol<T>();
  expect_close(d_out.download(), out_r, tol, what + " out");
  expect_close(d_mean.download(), mean_r, kStatTol, what + " mean");  // a short sum: exact enough
  expect_close(d_rstd.download(), rstd_r, tiny ? 1e-4 : kStatTol, what + " rstd");

  struct Grads {
    std::vector<float> dx, dw, db;
  };
  auto backward = [&] {
    OffsetBuffer<T> d_dx(dx0, s.off);
    DeviceBuffer<float> d_dw(dw0), d_db(db0);
    DeviceBytes ws(layernorm_backward_workspace_bytes(N, C));
    layernorm_backward<T>(d_dx.get(), d_dw.get(), d_db.get(), d_dout.get(), d_x.get(), d_w.get(),
                          d_mean.get(), d_rstd.get(), N, C, ws.get(), cudaStream_t{});
    return Grads{d_dx.download(), d_dw.download(), d_db.download()};
  };
  const Grads g1 = backward(), g2 = backward();

  auto dx_r = cast_vec<double>(dx0), dw_r = cast_vec<double>(dw0), db_r = cast_vec<double>(db0);
  cpu::layernorm_backward<double>(dx_r.data(), dw_r.data(), db_r.data(),
                                  cast_vec<double>(dout).data(), xd.data(), wd.data(),
                                  mean_r.data(), rstd_r.data(), N, C);
  expect_close(g1.dx, dx_r, tol, what + " dx");
  expect_close(g1.dw, dw_r, kParamTol, what + " dw");
  expect_close(g1.db, db_r, kParamTol, what + " db");
  expect_bitwise_equal(g1.dx, g2.dx, what + " dx determinism");
  expect_bitwise_equal(g1.dw, g2.dw, what + " dw determinism");
  expect_bitwise_equal(g1.db, g2.db, what + " db determinism");
}

TEST(CudaLayerNorm, Float) {
  KUMIKO_REQUIRE_GPU();
  uint32_t seed = 300;
  for (const Shape& s : shapes()) check_layernorm<float>(s, seed += 10);
}

TEST(CudaLayerNorm, Bf16) {
  KUMIKO_REQUIRE_GPU();
  uint32_t seed = 400;
  for (const Shape& s : shapes()) check_layernorm<bf16>(s, seed += 10);
}

// ---- rmsnorm -------------------------------------------------------------------------

template <typename T>
void check_rmsnorm(const Shape& s, uint32_t seed) {
  const int64_t N = s.N, C = s.C;
  const size_t NC = size_t(N * C), rows = size_t(N);
  const float eps = 1e-5f;
  const auto x = as_seen<T>(random_vec(NC, seed, 1.5, 0.5));
  const auto w = as_seen<T>(random_vec(size_t(C), seed + 1, 0.5, 1.0));
  const auto dout = as_seen<T>(random_vec(NC, seed + 2));
  const auto dx0 = as_seen<T>(random_vec(NC, seed + 3));
  const auto dw0 = random_vec(size_t(C), seed + 4);

  OffsetBuffer<T> d_x(x, s.off), d_w(w, s.off), d_dout(dout, s.off), d_out(NC, s.off);
  DeviceBuffer<float> d_rstd(rows);
  rmsnorm_forward<T>(d_out.get(), d_rstd.get(), d_x.get(), d_w.get(), N, C, eps, cudaStream_t{});

  const auto xd = cast_vec<double>(x), wd = cast_vec<double>(w);
  std::vector<double> out_r(NC), rstd_r(rows);
  cpu::rmsnorm_forward<double>(out_r.data(), rstd_r.data(), xd.data(), wd.data(), N, C,
                               double(eps));
  const std::string what = name("rmsnorm", s);
  expect_close(d_out.download(), out_r, out_tol<T>(), what + " out");
  expect_close(d_rstd.download(), rstd_r, kStatTol, what + " rstd");

  auto backward = [&] {
    OffsetBuffer<T> d_dx(dx0, s.off);
    DeviceBuffer<float> d_dw(dw0);
    DeviceBytes ws(rmsnorm_backward_workspace_bytes(N, C));
    rmsnorm_backward<T>(d_dx.get(), d_dw.get(), d_dout.get(), d_x.get(), d_w.get(), d_rstd.get(), N,
                        C, ws.get(), cudaStream_t{});
    return std::make_pair(d_dx.download(), d_dw.download());
  };
  const auto [dx1, dw1] = backward();
  const auto [dx2, dw2] = backward();

  auto dx_r = cast_vec<double>(dx0), dw_r = cast_vec<double>(dw0);
  cpu::rmsnorm_backward<double>(dx_r.data(), dw_r.data(), cast_vec<double>(dout).data(), xd.data(),
                                wd.data(), rstd_r.data(), N, C);
  expect_close(dx1, dx_r, out_tol<T>(), what + " dx");
  expect_close(dw1, dw_r, kParamTol, what + " dw");
  expect_bitwise_equal(dx1, dx2, what + " dx determinism");
  expect_bitwise_equal(dw1, dw2, what + " dw determinism");
}

TEST(CudaRmsNorm, Float) {
  KUMIKO_REQUIRE_GPU();
  uint32_t seed = 500;
  for (const Shape& s : shapes()) check_rmsnorm<float>(s, seed += 10);
}

TEST(CudaRmsNorm, Bf16) {
  KUMIKO_REQUIRE_GPU();
  uint32_t seed = 600;
  for (const Shape& s : shapes()) check_rmsnorm<bf16>(s, seed += 10);
}

TEST(CudaNorms, WorkspaceDependsOnlyOnShape) {  // host code: runs without a GPU too
  EXPECT_EQ(layernorm_backward_workspace_bytes(0, 768), 0u);
  EXPECT_EQ(rmsnorm_backward_workspace_bytes(0, 768), 0u);
  EXPECT_EQ(layernorm_backward_workspace_bytes(4096, 768),
            2 * rmsnorm_backward_workspace_bytes(4096, 768));
  EXPECT_GT(layernorm_backward_workspace_bytes(37, 100), 0u);
  EXPECT_GT(rmsnorm_backward_workspace_bytes(37, 4096), 0u);
}

}  // namespace
}  // namespace kumiko::cuda
