// The kernels instantiated on bf16 storage (backend::CpuBf16 calls them directly) against
// the composition they replace: widen every bf16 operand to fp32, run the float kernel,
// round what is stored back to bf16. Both compute the same fp32 expressions from the same
// exact fp32 inputs; the compiler may vectorise the two instantiations' reductions and
// contract their multiply-adds differently, which moves an fp32 value by a few ulps. So:
//   bf16 outputs: every element within one bf16 ulp (an fp32 change of a few 2^-24 can
//     flip one rounding to nearest, never two) or, where a result cancels to far below
//     its terms (a norm's dx near 0), within 2^-16 of the array's rms (a reduction
//     summed in another order is off by some 2^-24 of its terms' scale, which can be
//     several bf16 ulps of a tiny result); and at least 99 % bitwise equal (a flip needs
//     the fp32 value within a few 2^-24 of a rounding midpoint, ~2^-14 of cases);
//   fp32 outputs (statistics, parameter gradients): within rows x 2^-24 of the scale of
//     the array (a different order of `rows` fp32 additions), relative to |want| + 1.
// Seeded normal data, sizes that leave vector tails (C = 100, n = 1001).
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "kernels/cpu/attention_tiles.h"
#include "kumiko/core/bf16.h"
#include "kumiko/ops/attention.h"
#include "kumiko/ops/bf16.h"
#include "kumiko/ops/elementwise.h"
#include "kumiko/ops/embedding.h"
#include "kumiko/ops/gelu.h"
#include "kumiko/ops/layernorm.h"
#include "kumiko/ops/linear.h"
#include "kumiko/ops/rmsnorm.h"
#include "kumiko/ops/rope.h"
#include "kumiko/ops/swiglu.h"
#include "tests/kernels/cpu/test_util.h"

namespace kumiko::cpu {
namespace {

using test::random_bf16;

std::vector<float> wide(const std::vector<bf16>& x) {
  std::vector<float> f(x.size());
  widen(f.data(), x.data(), static_cast<int64_t>(x.size()));
  return f;
}

// got (bf16) against bf16(want) (want: the fp32 kernel's result).
void expect_bf16_near(const std::vector<bf16>& got, const std::vector<float>& want,
                      const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  double ss = 0;
  for (float v : want) ss += double(v) * double(v);
  const double floor = std::ldexp(1.0, -16) * std::sqrt(ss / double(want.size()));
  size_t same = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const bf16 w = to_bf16(want[i]);
    if (got[i].bits == w.bits) {
      ++same;
      continue;
    }
    // Adjacent bf16 values of one sign differ by one in their bit patterns.
    const bool one_ulp =
        (got[i].bits >> 15) == (w.bits >> 15) && std::abs(int{got[i].bits} - int{w.bits}) == 1;
    const bool cancelled = std::abs(double(to_float(got[i])) - double(want[i])) <= floor;
    ASSERT_TRUE(one_ulp || cancelled)
        << what << "[" << i << "]: " << to_float(got[i]) << " vs " << to_float(w);
  }
  EXPECT_GE(same, got.size() * 99 / 100)
      << what << ": " << got.size() - same << " of " << got.size() << " differ";
}

void expect_fp32_near(const std::vector<float>& got, const std::vector<float>& want, int64_t rows,
                      const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  const double tol = static_cast<double>(rows) * std::ldexp(1.0, -24);
  for (size_t i = 0; i < got.size(); ++i)
    ASSERT_LE(std::abs(double(got[i]) - double(want[i])), tol * (std::abs(double(want[i])) + 1.0))
        << what << "[" << i << "]";
}

constexpr int64_t N = 37, C = 100, n = N * C;
const auto sz = [](int64_t k) { return static_cast<size_t>(k); };

TEST(Bf16Storage, GeluAndSwiGlu) {
  const auto x = random_bf16(sz(n), 1, 2.0), dy = random_bf16(sz(n), 2), up = random_bf16(sz(n), 3);
  const auto xf = wide(x), dyf = wide(dy), upf = wide(up);

  std::vector<bf16> out(sz(n));
  std::vector<float> outf(sz(n));
  gelu_forward(out.data(), x.data(), n);
  gelu_forward(outf.data(), xf.data(), n);
  expect_bf16_near(out, outf, "gelu out");

  auto dx = random_bf16(sz(n), 4);  // the kernels accumulate into dx
  auto dxf = wide(dx);
  gelu_backward(dx.data(), dy.data(), x.data(), n, false);
  gelu_backward(dxf.data(), dyf.data(), xf.data(), n, false);
  expect_bf16_near(dx, dxf, "gelu dx");
  std::vector<bf16> dxo(sz(n), bf16{0x7fc0});  // NaN: overwritten, not read
  std::vector<float> dxof(sz(n));
  gelu_backward(dxo.data(), dy.data(), x.data(), n, true);
  gelu_backward(dxof.data(), dyf.data(), xf.data(), n, true);
  expect_bf16_near(dxo, dxof, "gelu dx overwritten");

  swiglu_forward(out.data(), x.data(), up.data(), n);
  swiglu_forward(outf.data(), xf.data(), upf.data(), n);
  expect_bf16_near(out, outf, "swiglu out");
  auto dg = random_bf16(sz(n), 6), du = random_bf16(sz(n), 7);
  auto dgf = wide(dg), duf = wide(du);
  swiglu_backward(dg.data(), du.data(), dy.data(), x.data(), up.data(), n, false);
  swiglu_backward(dgf.data(), duf.data(), dyf.data(), xf.data(), upf.data(), n, false);
  expect_bf16_near(dg, dgf, "swiglu dgate");
  expect_bf16_near(du, duf, "swiglu dup");
  std::vector<bf16> dgo(sz(n), bf16{0x7fc0}), duo(dgo);
  std::vector<float> dgof(sz(n)), duof(sz(n));
  swiglu_backward(dgo.data(), duo.data(), dy.data(), x.data(), up.data(), n, true);
  swiglu_backward(dgof.data(), duof.data(), dyf.data(), xf.data(), upf.data(), n, true);
  expect_bf16_near(dgo, dgof, "swiglu dgate overwritten");
  expect_bf16_near(duo, duof, "swiglu dup overwritten");

  auto sum = random_bf16(sz(n), 8);
  auto sumf = wide(sum);
  add_inplace(sum.data(), up.data(), n);
  add_inplace(sumf.data(), upf.data(), n);
  expect_bf16_near(sum, sumf, "add_inplace");
}

TEST(Bf16Storage, LayerNormAndRmsNorm) {
  const auto x = random_bf16(sz(n), 11, 3.0), dy = random_bf16(sz(n), 12);
  const auto w = random_bf16(sz(C), 13), b = random_bf16(sz(C), 14);
  const auto xf = wide(x), dyf = wide(dy), wf = wide(w), bf = wide(b);
  for (const bool rms : {false, true}) {
    SCOPED_TRACE(rms ? "rmsnorm" : "layernorm");
    std::vector<bf16> out(sz(n));
    std::vector<float> outf(sz(n)), mean(sz(N)), rstd(sz(N)), meanf(sz(N)), rstdf(sz(N));
    if (rms) {
      rmsnorm_forward(out.data(), rstd.data(), x.data(), w.data(), N, C, 1e-5f);
      rmsnorm_forward(outf.data(), rstdf.data(), xf.data(), wf.data(), N, C, 1e-5f);
    } else {
      layernorm_forward(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N, C,
                        1e-5f);
      layernorm_forward(outf.data(), meanf.data(), rstdf.data(), xf.data(), wf.data(), bf.data(), N,
                        C, 1e-5f);
      expect_fp32_near(mean, meanf, C, "mean");
    }
    expect_fp32_near(rstd, rstdf, C, "rstd");
    expect_bf16_near(out, outf, "out");

    auto dx = random_bf16(sz(n), 15);  // accumulates: the residual stream's gradient
    auto dxf = wide(dx);
    auto dw = test::random_vec(sz(C), 16), db = test::random_vec(sz(C), 17);
    auto dwf = dw, dbf = db;
    if (rms) {
      rmsnorm_backward(dx.data(), dw.data(), dy.data(), x.data(), w.data(), rstdf.data(), N, C);
      rmsnorm_backward(dxf.data(), dwf.data(), dyf.data(), xf.data(), wf.data(), rstdf.data(), N,
                       C);
    } else {
      layernorm_backward(dx.data(), dw.data(), db.data(), dy.data(), x.data(), w.data(),
                         meanf.data(), rstdf.data(), N, C);
      layernorm_backward(dxf.data(), dwf.data(), dbf.data(), dyf.data(), xf.data(), wf.data(),
                         meanf.data(), rstdf.data(), N, C);
      expect_fp32_near(db, dbf, N, "db");
    }
    expect_bf16_near(dx, dxf, "dx");
    expect_fp32_near(dw, dwf, N, "dw");
  }
}

TEST(Bf16Storage, RopeBiasesPositionsAndEmbeddings) {
  const int64_t B = 2, T = 5, Hq = 4, Hkv = 2, D = 16, nq = B * T * (Hq + 2 * Hkv) * D;
  for (const bool backward : {false, true}) {
    auto q = random_bf16(sz(nq), 21);
    auto qf = wide(q);
    if (backward) {
      rope_backward(q.data(), B, T, Hq, Hkv, D, 10000.0);
      rope_backward(qf.data(), B, T, Hq, Hkv, D, 10000.0);
    } else {
      rope_forward(q.data(), B, T, Hq, Hkv, D, 10000.0);
      rope_forward(qf.data(), B, T, Hq, Hkv, D, 10000.0);
    }
    expect_bf16_near(q, qf, backward ? "rope backward" : "rope forward");
  }

  const auto dy = random_bf16(sz(n), 22), pos = random_bf16(sz(T * C), 23);
  const auto dyf = wide(dy), posf = wide(pos);
  auto db = test::random_vec(sz(C), 24);
  auto dbf = db;
  bias_backward(db.data(), dy.data(), N, C);
  bias_backward(dbf.data(), dyf.data(), N, C);
  expect_fp32_near(db, dbf, N, "bias_backward");

  auto x = random_bf16(sz(n), 25);
  auto xf = wide(x);
  add_positions_range(x.data(), pos.data(), 3, N, T, C);  // rows start at position 3
  add_positions_range(xf.data(), posf.data(), 3, N, T, C);
  expect_bf16_near(x, xf, "add_positions_range");

  auto dpos = test::random_vec(sz(T * C), 26);
  auto dposf = dpos;
  const int64_t Bp = 3;  // dy as [3, 5, C] (15 of its 37 rows)
  add_positions_backward(dpos.data(), dy.data(), Bp, T, C);
  add_positions_backward(dposf.data(), dyf.data(), Bp, T, C);
  expect_fp32_near(dpos, dposf, Bp, "add_positions_backward");

  const int64_t V = 11;
  const auto ids = test::random_ids(sz(N), static_cast<int32_t>(V), 27);
  auto dtable = test::random_vec(sz(V * C), 28);
  auto dtablef = dtable;
  embedding_backward(dtable.data(), dy.data(), ids.data(), N, C);
  embedding_backward(dtablef.data(), dyf.data(), ids.data(), N, C);
  expect_fp32_near(dtable, dtablef, N, "embedding_backward");
}

// Attention on bf16 storage against the fp32 kernel on the same (widened) inputs. T = 100
// leaves a partial 64-key block; Hq = 4 over Hkv = 2 is GQA. Run through the public entry
// points (vdpbf16ps tiles on CPUs with AVX512-BF16, widened fp32 tiles elsewhere) and
// through the vdpbf16ps kernels directly (their portable loop where the CPU lacks them):
// the first products are the fp32 arithmetic in another order, P and dS reach the second
// products to 2^-16 (bf16_dot.h), far inside the one-ulp / 99 % bounds above.
using AttnForward = void (*)(bf16*, float*, const bf16*, int64_t, int64_t, int64_t, int64_t,
                             int64_t);
using AttnBackward = void (*)(bf16*, const bf16*, const bf16*, const bf16*, const float*, int64_t,
                              int64_t, int64_t, int64_t, int64_t, bool);

void check_attention(AttnForward forward, AttnBackward backward, int64_t D = 16) {
  SCOPED_TRACE("D = " + std::to_string(D));
  const int64_t B = 2, T = 100, Hq = 4, Hkv = 2, nq = B * T * (Hq + 2 * Hkv) * D,
                no = B * T * Hq * D;
  const auto qkv = random_bf16(sz(nq), 31), dy = random_bf16(sz(no), 32);
  const auto qkvf = wide(qkv), dyf = wide(dy);
  std::vector<bf16> out(sz(no));
  std::vector<float> outf(sz(no)), lse(sz(B * Hq * T)), lsef(lse.size());
  forward(out.data(), lse.data(), qkv.data(), B, T, Hq, Hkv, D);
  attention_forward(outf.data(), lsef.data(), qkvf.data(), B, T, Hq, Hkv, D);
  expect_bf16_near(out, outf, "attention out");
  expect_fp32_near(lse, lsef, T, "attention lse");
  // The backward accumulates into dqkv; the fp32 kernel reads the bf16 forward's output.
  auto dqkv = random_bf16(sz(nq), 33);
  auto dqkvf = wide(dqkv);
  const auto outw = wide(out);
  backward(dqkv.data(), dy.data(), qkv.data(), out.data(), lse.data(), B, T, Hq, Hkv, D, false);
  attention_backward(dqkvf.data(), dyf.data(), qkvf.data(), outw.data(), lse.data(), B, T, Hq, Hkv,
                     D, false);
  expect_bf16_near(dqkv, dqkvf, "attention dqkv");
  // Overwriting never reads dqkv: from NaN, bitwise what accumulating onto zeros gives.
  std::vector<bf16> acc(sz(nq), to_bf16(0.0f)), over(sz(nq), to_bf16(std::nanf("")));
  backward(acc.data(), dy.data(), qkv.data(), out.data(), lse.data(), B, T, Hq, Hkv, D, false);
  backward(over.data(), dy.data(), qkv.data(), out.data(), lse.data(), B, T, Hq, Hkv, D, true);
  test::expect_bitwise_equal(over, acc, "attention dqkv overwritten vs accumulated onto zeros");
}

// An odd D takes the widened tiles on every CPU.
TEST(Bf16Storage, Attention) {
  for (int64_t D : {16, 15}) check_attention(attention_forward<bf16>, attention_backward<bf16>, D);
}

// D = 40: a 16-column group cut at 8; D = 72: a second 64-column panel.
TEST(Bf16Storage, AttentionOnBf16Pairs) {
  for (int64_t D : {16, 40, 72})
    check_attention(detail::attention_forward_dpbf16, detail::attention_backward_dpbf16, D);
}

}  // namespace
}  // namespace kumiko::cpu
