// rope and causal GQA attention: fast float kernels vs the double reference, plus
// determinism. T is chosen to span several 64-row blocks with a partial last block.
#include "kernels/cpu/reference/attention.h"
#include "kumiko/ops/attention.h"
#include "kumiko/ops/rope.h"
#include "tests/kernels/cpu/test_util.h"

namespace kumiko::cpu {
namespace {

using test::cast_vec;
using test::expect_close;
using test::random_vec;

struct Shape {
  int64_t B, T, Hq, Hkv, D;
  size_t qkv() const { return static_cast<size_t>(B * T * (Hq + 2 * Hkv) * D); }
  size_t out() const { return static_cast<size_t>(B * T * Hq * D); }
  size_t lse() const { return static_cast<size_t>(B * Hq * T); }
};

TEST(Rope, ForwardBackwardMatchReference) {
  for (Shape s : {Shape{2, 13, 4, 2, 8, }, Shape{1, 37, 3, 3, 16}}) {
    auto qkv = random_vec(s.qkv(), 60);
    auto ref = cast_vec<double>(qkv);
    const auto v_before = qkv;
    rope_forward<float>(qkv.data(), s.B, s.T, s.Hq, s.Hkv, s.D, 10000.0);
    reference::rope<double>(ref.data(), s.B, s.T, s.Hq, s.Hkv, s.D, 10000.0, false);
    expect_close(qkv, ref, 1e-5, "rope forward");
    // v heads untouched (bitwise).
    const int64_t row = (s.Hq + 2 * s.Hkv) * s.D;
    for (int64_t t = 0; t < s.B * s.T; ++t)
      for (int64_t c = (s.Hq + s.Hkv) * s.D; c < row; ++c)
        ASSERT_EQ(qkv[static_cast<size_t>(t * row + c)], v_before[static_cast<size_t>(t * row + c)]);
    rope_backward<float>(qkv.data(), s.B, s.T, s.Hq, s.Hkv, s.D, 10000.0);
    reference::rope<double>(ref.data(), s.B, s.T, s.Hq, s.Hkv, s.D, 10000.0, true);
    expect_close(qkv, ref, 1e-5, "rope backward");
    expect_close(qkv, cast_vec<double>(v_before), 1e-5, "rope backward inverts forward");
  }
}

void run_attention(Shape s, uint32_t seed) {
  const auto qkv = random_vec(s.qkv(), seed, 1.5);
  const auto dout = random_vec(s.out(), seed + 1);
  auto out = test::poisoned<float>(s.out()), lse = test::poisoned<float>(s.lse());
  attention_forward<float>(out.data(), lse.data(), qkv.data(), s.B, s.T, s.Hq, s.Hkv, s.D);
  std::vector<double> outr(s.out()), lser(s.lse());
  const auto qkvd = cast_vec<double>(qkv);
  reference::attention_forward<double>(outr.data(), lser.data(), qkvd.data(), s.B, s.T, s.Hq,
                                       s.Hkv, s.D);
  const std::string tag = " B=" + std::to_string(s.B) + " T=" + std::to_string(s.T) +
                          " Hq=" + std::to_string(s.Hq) + " Hkv=" + std::to_string(s.Hkv) +
                          " D=" + std::to_string(s.D);
  expect_close(out, outr, 1e-5, "attention out" + tag);
  expect_close(lse, lser, 1e-5, "attention lse" + tag);

  auto dqkv = random_vec(s.qkv(), seed + 2);  // accumulates onto existing values
  auto dqkvr = cast_vec<double>(dqkv);
  attention_backward<float>(dqkv.data(), dout.data(), qkv.data(), out.data(), lse.data(), s.B, s.T,
                            s.Hq, s.Hkv, s.D, /*overwrite=*/false);
  reference::attention_backward<double>(dqkvr.data(), cast_vec<double>(dout).data(), qkvd.data(),
                                        outr.data(), lser.data(), s.B, s.T, s.Hq, s.Hkv, s.D);
  expect_close(dqkv, dqkvr, 1e-5, "attention dqkv" + tag);
}

TEST(Attention, GroupedQueryMatchesReference) {
  run_attention({2, 13, 4, 2, 8}, 70);
  run_attention({1, 70, 4, 2, 16}, 71);  // 2 blocks, partial last
  run_attention({1, 64, 6, 1, 8}, 72);   // multi-query, exact block
  run_attention({2, 128, 2, 1, 8}, 73);  // exact blocks, off-diagonal path
}

TEST(Attention, LargerShapeMatchesReference) {
  run_attention({2, 200, 4, 2, 64}, 75);  // 4 blocks (last partial), model-sized head dim
}

TEST(Attention, MultiHeadMatchesReference) {
  run_attention({2, 13, 4, 4, 8}, 80);
  run_attention({1, 45, 2, 2, 16}, 81);
}

TEST(Attention, DeterministicAcrossCallsAndThreads) {
  const Shape s{2, 77, 4, 2, 16};
  const auto qkv = random_vec(s.qkv(), 90), dout = random_vec(s.out(), 91);
  test::check_determinism([&] {
    std::vector<float> out(s.out()), lse(s.lse()), dqkv(s.qkv(), 0.f);
    attention_forward<float>(out.data(), lse.data(), qkv.data(), s.B, s.T, s.Hq, s.Hkv, s.D);
    attention_backward<float>(dqkv.data(), dout.data(), qkv.data(), out.data(), lse.data(), s.B,
                              s.T, s.Hq, s.Hkv, s.D, /*overwrite=*/false);
    auto r = qkv;
    rope_forward<float>(r.data(), s.B, s.T, s.Hq, s.Hkv, s.D, 500000.0);
    out.insert(out.end(), lse.begin(), lse.end());
    out.insert(out.end(), dqkv.begin(), dqkv.end());
    out.insert(out.end(), r.begin(), r.end());
    return out;
  }, "attention");
}

// Each task's arithmetic is independent of the thread running it: bitwise equal
// results for 1 and 2 threads (dqkv accumulated onto non-zero values).
TEST(Attention, BitwiseEqualAcrossThreadCounts) {
  const Shape s{3, 150, 6, 2, 32};
  const auto qkv = random_vec(s.qkv(), 95, 1.5), dout = random_vec(s.out(), 96);
  auto run = [&] {
    std::vector<float> out(s.out()), lse(s.lse()), dqkv = random_vec(s.qkv(), 97);
    attention_forward<float>(out.data(), lse.data(), qkv.data(), s.B, s.T, s.Hq, s.Hkv, s.D);
    attention_backward<float>(dqkv.data(), dout.data(), qkv.data(), out.data(), lse.data(), s.B,
                              s.T, s.Hq, s.Hkv, s.D, /*overwrite=*/false);
    out.insert(out.end(), lse.begin(), lse.end());
    out.insert(out.end(), dqkv.begin(), dqkv.end());
    return out;
  };
  std::vector<float> one, two;
  test::with_threads(1, [&] { one = run(); });
  test::with_threads(2, [&] { two = run(); });
  test::expect_bitwise_equal(one, two, "attention 1 vs 2 threads");
}

// With overwrite the backward never reads dqkv: from NaN it gives bitwise what
// accumulating onto zeros gives, so every task zeroes all of its slices and only its own
// (a slice left out keeps its NaN; a neighbour's zeroed after its sums loses them).
template <typename T>
void check_overwrite(Shape s, uint32_t seed) {
  const auto qkv = cast_vec<T>(random_vec(s.qkv(), seed, 1.5));
  const auto dout = cast_vec<T>(random_vec(s.out(), seed + 1));
  std::vector<T> out(s.out()), lse(s.lse());
  attention_forward<T>(out.data(), lse.data(), qkv.data(), s.B, s.T, s.Hq, s.Hkv, s.D);
  std::vector<T> acc(s.qkv(), T(0));
  auto over = test::poisoned<T>(s.qkv());
  attention_backward<T>(acc.data(), dout.data(), qkv.data(), out.data(), lse.data(), s.B, s.T, s.Hq,
                        s.Hkv, s.D, /*overwrite=*/false);
  attention_backward<T>(over.data(), dout.data(), qkv.data(), out.data(), lse.data(), s.B, s.T,
                        s.Hq, s.Hkv, s.D, /*overwrite=*/true);
  test::expect_bitwise_equal(over, acc, "attention dqkv overwritten vs accumulated onto zeros");
}

TEST(Attention, OverwriteNeverReadsDqkv) {
  for (Shape s : {Shape{2, 70, 4, 2, 8}, Shape{1, 64, 6, 1, 16}, Shape{3, 13, 2, 2, 8}}) {
    check_overwrite<float>(s, 120);
    check_overwrite<double>(s, 121);
  }
}

}  // namespace
}  // namespace kumiko::cpu
