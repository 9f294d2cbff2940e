// Finite-difference checks of every op's backward, on the DOUBLE instantiation of the
// fast kernels: loss = sum(out * r) with random r; the analytic gradient (backward
// with dout = r, accumulated onto zeros) must match central differences of the
// forward with eps = 1e-6 at every entry (rule: tests/support/gradcheck.h).
#include <functional>
#include <iostream>

#include "kumiko/ops/attention.h"
#include "kumiko/ops/cross_entropy.h"
#include "kumiko/ops/embedding.h"
#include "kumiko/ops/gelu.h"
#include "kumiko/ops/layernorm.h"
#include "kumiko/ops/linear.h"
#include "kumiko/ops/rmsnorm.h"
#include "kumiko/ops/rope.h"
#include "kumiko/ops/swiglu.h"
#include "gradcheck.h"
#include "tests/kernels/cpu/test_util.h"

namespace kumiko::cpu {
namespace {

using Vec = std::vector<double>;
using test::random_vec;

// Checks d(sum(forward(x) * r))/dx against `analytic` for every entry of the input x
// (modified in place during the check and restored), with the agreement rule of
// tests/support/gradcheck.h; the round-off scale is sum |forward(x) * r|.
void check_grad(const std::function<Vec()>& forward, Vec& x, const Vec& r, const Vec& analytic,
                const std::string& what) {
  ASSERT_EQ(x.size(), analytic.size()) << what;
  const double eps = 1e-6;
  auto loss = [&](bool magnitude) {
    const Vec out = forward();
    double s = 0;
    for (size_t i = 0; i < out.size(); ++i) s += magnitude ? std::abs(out[i] * r[i]) : out[i] * r[i];
    return s;
  };
  const test::GradTolerance tol = test::fd_tolerance(loss(true), eps);
  std::vector<test::GradEntry> entries;
  double largest = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    const double x0 = x[i];
    x[i] = x0 + eps;
    const double lp = loss(false);
    x[i] = x0 - eps;
    const double lm = loss(false);
    x[i] = x0;
    entries.push_back({static_cast<int64_t>(i), (lp - lm) / (2 * eps), analytic[i]});
    largest = std::max(largest, std::abs(entries.back().numeric));
  }
  EXPECT_EQ("", test::grad_disagreements(entries, tol)) << what;
  std::cout << "[ NOTE     ] " << what << ": atol " << tol.atol << ", the largest discrepancy used "
            << test::grad_worst_ratio(entries, tol) << " of the allowed difference\n";
  EXPECT_GT(largest, 100 * tol.atol) << what << ": the finite-difference gradient is negligible everywhere";
}

Vec zeros(size_t n) { return Vec(n, 0.0); }

// Finite differences call the forward thousands of times on tiny inputs: one thread
// keeps this fast on a loaded machine (threading is covered by tests/kernels/cpu).
class GradOps : public ::testing::Test {
 protected:
  void SetUp() override {
    threads_ = omp_get_max_threads();
    omp_set_num_threads(1);
  }
  void TearDown() override { omp_set_num_threads(threads_); }
  int threads_ = 1;
};

TEST_F(GradOps, Linear) {
  const int64_t N = 5, in = 7, out = 6;
  Vec x = random_vec<double>(N * in, 1), w = random_vec<double>(out * in, 2),
      b = random_vec<double>(out, 3);
  const Vec r = random_vec<double>(N * out, 4);
  Vec dx = zeros(x.size()), dw = zeros(w.size()), db = zeros(b.size());
  linear_backward<double>(dx.data(), dw.data(), db.data(), r.data(), x.data(), w.data(), N, in,
                          out);
  auto fwd = [&] {
    Vec y(static_cast<size_t>(N * out));
    linear_forward<double>(y.data(), x.data(), w.data(), b.data(), N, in, out);
    return y;
  };
  check_grad(fwd, x, r, dx, "linear dx");
  check_grad(fwd, w, r, dw, "linear dw");
  check_grad(fwd, b, r, db, "linear db");
}

TEST_F(GradOps, LayerNorm) {
  const int64_t N = 5, C = 9;
  Vec x = random_vec<double>(N * C, 10, 2.0, 0.3), w = random_vec<double>(C, 11, 0.5, 1.0),
      b = random_vec<double>(C, 12);
  const Vec r = random_vec<double>(N * C, 13);
  Vec mean(N), rstd(N), out(N * C);
  layernorm_forward<double>(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N,
                            C, 1e-5);
  Vec dx = zeros(x.size()), dw = zeros(w.size()), db = zeros(b.size());
  layernorm_backward<double>(dx.data(), dw.data(), db.data(), r.data(), x.data(), w.data(),
                             mean.data(), rstd.data(), N, C);
  auto fwd = [&] {
    Vec o(static_cast<size_t>(N * C)), m(N), s(N);
    layernorm_forward<double>(o.data(), m.data(), s.data(), x.data(), w.data(), b.data(), N, C,
                              1e-5);
    return o;
  };
  check_grad(fwd, x, r, dx, "layernorm dx");
  check_grad(fwd, w, r, dw, "layernorm dw");
  check_grad(fwd, b, r, db, "layernorm db");
}

TEST_F(GradOps, RmsNorm) {
  const int64_t N = 5, C = 9;
  Vec x = random_vec<double>(N * C, 20, 2.0, 0.3), w = random_vec<double>(C, 21, 0.5, 1.0);
  const Vec r = random_vec<double>(N * C, 23);
  Vec rstd(N), out(N * C);
  rmsnorm_forward<double>(out.data(), rstd.data(), x.data(), w.data(), N, C, 1e-5);
  Vec dx = zeros(x.size()), dw = zeros(w.size());
  rmsnorm_backward<double>(dx.data(), dw.data(), r.data(), x.data(), w.data(), rstd.data(), N, C);
  auto fwd = [&] {
    Vec o(static_cast<size_t>(N * C)), s(N);
    rmsnorm_forward<double>(o.data(), s.data(), x.data(), w.data(), N, C, 1e-5);
    return o;
  };
  check_grad(fwd, x, r, dx, "rmsnorm dx");
  check_grad(fwd, w, r, dw, "rmsnorm dw");
}

TEST_F(GradOps, GeluAndSwiGlu) {
  const int64_t n = 41;
  Vec x = random_vec<double>(n, 30, 2.0), up = random_vec<double>(n, 31);
  const Vec r = random_vec<double>(n, 32);
  Vec dx = zeros(n);
  gelu_backward<double>(dx.data(), r.data(), x.data(), n, true);
  check_grad([&] { Vec o(n); gelu_forward<double>(o.data(), x.data(), n); return o; }, x, r, dx,
             "gelu dx");
  Vec dg = zeros(n), du = zeros(n);
  swiglu_backward<double>(dg.data(), du.data(), r.data(), x.data(), up.data(), n, true);
  auto fwd = [&] {
    Vec o(n);
    swiglu_forward<double>(o.data(), x.data(), up.data(), n);
    return o;
  };
  check_grad(fwd, x, r, dg, "swiglu dgate");
  check_grad(fwd, up, r, du, "swiglu dup");
}

TEST_F(GradOps, CrossEntropy) {
  const int64_t N = 4, V = 11;
  Vec logits = random_vec<double>(N * V, 40, 2.0);
  const auto targets = test::random_ids(N, int32_t(V), 41);
  const Vec r = random_vec<double>(N, 42);
  // dlogits for loss = sum_n r[n] losses[n]: one row at a time with dloss_scale = r[n].
  Vec d(static_cast<size_t>(N * V)), losses(N);
  for (int64_t n = 0; n < N; ++n) {
    cross_entropy_forward_backward<double>(losses.data() + n, d.data() + n * V,
                                           logits.data() + n * V, targets.data() + n, 1, V, r[n]);
  }
  check_grad([&] { Vec l(N); cross_entropy_forward<double>(l.data(), logits.data(),
                                                           targets.data(), N, V); return l; },
             logits, r, d, "cross_entropy dlogits");
}

TEST_F(GradOps, EmbeddingAndPositions) {
  const int64_t V = 6, C = 5, B = 2, T = 4, N = B * T;
  Vec table = random_vec<double>(V * C, 50), pos = random_vec<double>(T * C, 51);
  const auto ids = test::random_ids(N, int32_t(V), 52);
  const Vec r = random_vec<double>(N * C, 53);
  Vec dt = zeros(table.size()), dp = zeros(pos.size());
  embedding_backward<double>(dt.data(), r.data(), ids.data(), N, C);
  add_positions_backward<double>(dp.data(), r.data(), B, T, C);
  auto fwd = [&] {
    Vec o(static_cast<size_t>(N * C));
    embedding_forward<double>(o.data(), ids.data(), table.data(), N, C);
    add_positions_forward<double>(o.data(), pos.data(), B, T, C);
    return o;
  };
  check_grad(fwd, table, r, dt, "embedding dtable");
  check_grad(fwd, pos, r, dp, "positions dpos");
}

TEST_F(GradOps, Rope) {
  const int64_t B = 2, T = 5, Hq = 2, Hkv = 1, D = 8;
  const size_t n = static_cast<size_t>(B * T * (Hq + 2 * Hkv) * D);
  Vec x = random_vec<double>(n, 60);
  const Vec r = random_vec<double>(n, 61);
  Vec g = r;  // gradient w.r.t. the rotated buffer (identity on v)
  rope_backward<double>(g.data(), B, T, Hq, Hkv, D, 10000.0);
  check_grad([&] { Vec o = x; rope_forward<double>(o.data(), B, T, Hq, Hkv, D, 10000.0); return o; },
             x, r, g, "rope");
}

void check_attention(int64_t B, int64_t T, int64_t Hq, int64_t Hkv, int64_t D, uint32_t seed) {
  const size_t nqkv = static_cast<size_t>(B * T * (Hq + 2 * Hkv) * D);
  const size_t nout = static_cast<size_t>(B * T * Hq * D), nlse = static_cast<size_t>(B * Hq * T);
  Vec qkv = random_vec<double>(nqkv, seed, 1.5);
  const Vec r = random_vec<double>(nout, seed + 1);
  Vec out(nout), lse(nlse), dqkv = zeros(nqkv);
  attention_forward<double>(out.data(), lse.data(), qkv.data(), B, T, Hq, Hkv, D);
  attention_backward<double>(dqkv.data(), r.data(), qkv.data(), out.data(), lse.data(), B, T, Hq,
                             Hkv, D, /*overwrite=*/false);
  check_grad([&] {
    Vec o(nout), l(nlse);
    attention_forward<double>(o.data(), l.data(), qkv.data(), B, T, Hq, Hkv, D);
    return o;
  }, qkv, r, dqkv, "attention Hq=" + std::to_string(Hq) + " Hkv=" + std::to_string(Hkv) +
                       " T=" + std::to_string(T));
}

TEST_F(GradOps, AttentionGroupedQuery) {
  check_attention(2, 13, 4, 2, 8, 70);
  check_attention(1, 40, 2, 1, 8, 71);
  check_attention(1, 70, 2, 1, 4, 72);  // two 64-row blocks, partial last (off-diagonal path)
}

TEST_F(GradOps, AttentionMultiHead) { check_attention(1, 9, 2, 2, 16, 80); }

}  // namespace
}  // namespace kumiko::cpu
