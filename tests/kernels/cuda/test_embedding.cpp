// CUDA embedding kernels against kumiko::cpu in double: lookup with and without learned
// positions, the grouped (atomic-free) backward with many repeated ids accumulated onto
// a random dtable, add_positions_backward, and bitwise determinism. C = 100 takes the
// element-wise path, C = 128 the 8-wide vector path.
#include <string>
#include <type_traits>
#include <vector>

#include "kernels/cuda/embedding.cuh"
#include "kumiko/ops/embedding.h"
#include "tests/kernels/cpu/test_util.h"
#include "tests/support/gpu_test.h"

namespace kumiko::cuda {
namespace {

using test::as_seen;
using test::cast_vec;
using test::DeviceBuffer;
using test::DeviceIds;
using test::expect_close;
using test::random_ids;
using test::random_vec;

template <typename T>
void check_forward(int64_t C, bool with_pos) {
  const int64_t B = 3, T_ = 13, N = B * T_, vocab = 50;
  const auto ids = random_ids(size_t(N), int32_t(vocab), 200);
  const auto table = as_seen<T>(random_vec(size_t(vocab * C), 201));
  const auto pos = as_seen<T>(random_vec(size_t(T_ * C), 202));
  DeviceIds d_ids(ids);
  DeviceBuffer<T> d_table(table), d_pos(pos), d_out(size_t(N * C));
  embedding_forward<T>(d_out.get(), d_ids.get(), d_table.get(), with_pos ? d_pos.get() : nullptr, N, T_, C,
                       cudaStream_t{});
  std::vector<double> ref(size_t(N * C));
  cpu::embedding_forward<double>(ref.data(), ids.data(), cast_vec<double>(table).data(), N, C);
  if (with_pos) cpu::add_positions_forward<double>(ref.data(), cast_vec<double>(pos).data(), B, T_, C);
  // Without positions the lookup is an exact copy; with them one rounding to T.
  const double tol = !with_pos ? 0.0 : std::is_same_v<T, bf16> ? 1e-2 : 1e-6;
  expect_close(d_out.download(), ref, tol, "embedding forward C=" + std::to_string(C));
}

TEST(CudaEmbedding, ForwardFloat) {
  KUMIKO_REQUIRE_GPU();
  for (int64_t C : {100, 128}) {
    check_forward<float>(C, false);
    check_forward<float>(C, true);
  }
}

TEST(CudaEmbedding, ForwardBf16) {
  KUMIKO_REQUIRE_GPU();
  for (int64_t C : {100, 128}) {
    check_forward<bf16>(C, false);
    check_forward<bf16>(C, true);
  }
}

TEST(CudaEmbedding, GroupsLayout) {  // host code: runs without a GPU too
  const std::vector<int32_t> ids = {5, 2, 5, 9, 2, 5};
  const std::vector<int32_t> want = {3,                // U
                                     2, 5, 9,          // distinct ids, ascending
                                     0, 2, 5, 6,       // offsets
                                     1, 4, 0, 2, 5, 3};  // positions per token, ascending
  EXPECT_EQ(embedding_groups(ids.data(), int64_t(ids.size())), want);
  EXPECT_EQ(embedding_groups(nullptr, 0), (std::vector<int32_t>{0, 0}));
}

// dtable (random start) += grouped sums of dout; many repeats (300 ids over 17 tokens).
template <typename T>
std::vector<float> run_backward(const std::vector<int32_t>& ids, const std::vector<float>& dout,
                                const std::vector<float>& dtable0, int64_t C) {
  const int64_t N = int64_t(ids.size());
  DeviceIds d_groups(embedding_groups(ids.data(), N));
  DeviceBuffer<T> d_dout(dout);
  DeviceBuffer<float> d_dtable(dtable0);
  embedding_backward<T>(d_dtable.get(), d_dout.get(), d_groups.get(), N, C, cudaStream_t{});
  return d_dtable.download();
}

template <typename T>
void check_backward(int64_t C) {
  const int64_t N = 300, vocab = 17;
  const auto ids = random_ids(size_t(N), int32_t(vocab), 210);
  const auto dout = as_seen<T>(random_vec(size_t(N * C), 211));
  const auto dtable0 = random_vec(size_t(vocab * C), 212);
  const auto got = run_backward<T>(ids, dout, dtable0, C);
  auto ref = cast_vec<double>(dtable0);
  cpu::embedding_backward<double>(ref.data(), cast_vec<double>(dout).data(), ids.data(), N, C);
  // fp32 sums of ~18 rows onto fp32 dtable (also for bf16 dout, whose values are exact).
  expect_close(got, ref, 1e-5, "embedding backward C=" + std::to_string(C));
  test::expect_bitwise_equal(got, run_backward<T>(ids, dout, dtable0, C), "embedding backward determinism");
}

TEST(CudaEmbedding, BackwardFloat) {
  KUMIKO_REQUIRE_GPU();
  check_backward<float>(100);
  check_backward<float>(128);
}

TEST(CudaEmbedding, BackwardBf16) {
  KUMIKO_REQUIRE_GPU();
  check_backward<bf16>(100);
  check_backward<bf16>(128);
}

template <typename T>
void check_positions_backward(int64_t C) {
  const int64_t B = 5, T_ = 13;
  const auto dout = as_seen<T>(random_vec(size_t(B * T_ * C), 220));
  const auto dpos0 = random_vec(size_t(T_ * C), 221);
  auto run = [&] {
    DeviceBuffer<T> d_dout(dout);
    DeviceBuffer<float> d_dpos(dpos0);
    add_positions_backward<T>(d_dpos.get(), d_dout.get(), B, T_, C, cudaStream_t{});
    return d_dpos.download();
  };
  const auto got = run();
  auto ref = cast_vec<double>(dpos0);
  cpu::add_positions_backward<double>(ref.data(), cast_vec<double>(dout).data(), B, T_, C);
  expect_close(got, ref, 1e-5, "add_positions backward C=" + std::to_string(C));
  test::expect_bitwise_equal(got, run(), "add_positions backward determinism");
}

TEST(CudaEmbedding, PositionsBackwardFloat) {
  KUMIKO_REQUIRE_GPU();
  check_positions_backward<float>(100);
  check_positions_backward<float>(128);
}

TEST(CudaEmbedding, PositionsBackwardBf16) {
  KUMIKO_REQUIRE_GPU();
  check_positions_backward<bf16>(100);
  check_positions_backward<bf16>(128);
}

}  // namespace
}  // namespace kumiko::cuda
