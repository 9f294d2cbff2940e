// matmul, linear, layernorm, rmsnorm: fast float kernels vs the double reference,
// plus determinism (two calls bitwise equal; 1 vs 2 threads bitwise for kumiko's own
// kernels, within the reordering bound for the GEMMs).
#include "kernels/cpu/reference/linear.h"
#include "kernels/cpu/reference/norms.h"
#include "kumiko/ops/layernorm.h"
#include "kumiko/ops/linear.h"
#include "kumiko/ops/matmul.h"
#include "kumiko/ops/rmsnorm.h"
#include "tests/kernels/cpu/test_util.h"

namespace kumiko::cpu {
namespace {

using test::cast_vec;
using test::expect_close;
using test::random_vec;

using test::check_determinism;
using test::reorder_bound;

TEST(Matmul, AllTransposesMatchReference) {
  const int64_t M = 7, N = 33, K = 19;
  for (bool ta : {false, true}) {
    for (bool tb : {false, true}) {
      const auto A = random_vec(static_cast<size_t>(M * K), 1), B = random_vec(static_cast<size_t>(K * N), 2);
      auto C = random_vec(static_cast<size_t>(M * N), 3);
      const int64_t lda = ta ? M : K, ldb = tb ? K : N;
      auto Cd = cast_vec<double>(C);
      matmul<float>(ta, tb, M, N, K, 0.5f, A.data(), lda, B.data(), ldb, 2.0f, C.data(), N);
      reference::matmul<double>(ta, tb, M, N, K, 0.5, cast_vec<double>(A).data(), lda,
                                cast_vec<double>(B).data(), ldb, 2.0, Cd.data(), N);
      expect_close(C, Cd, 1e-5, "matmul ta=" + std::to_string(ta) + " tb=" + std::to_string(tb));
    }
  }
}

struct LinearCase {
  bool bias, with_dx;
};

TEST(Linear, ForwardBackwardMatchReference) {
  const int64_t N = 7, in = 33, out = 21;
  for (LinearCase lc : {LinearCase{true, true}, LinearCase{false, false}}) {
    const auto x = random_vec(static_cast<size_t>(N * in), 10), w = random_vec(static_cast<size_t>(out * in), 11, 0.2);
    const auto b = random_vec(static_cast<size_t>(out), 12), dy = random_vec(static_cast<size_t>(N * out), 13);
    auto y = test::poisoned<float>(static_cast<size_t>(N * out));
    std::vector<double> yr(y.size());
    linear_forward<float>(y.data(), x.data(), w.data(), lc.bias ? b.data() : nullptr, N, in, out);
    const auto xd = cast_vec<double>(x), wd = cast_vec<double>(w), bd = cast_vec<double>(b);
    reference::linear_forward<double>(yr.data(), xd.data(), wd.data(),
                                      lc.bias ? bd.data() : nullptr, N, in, out);
    expect_close(y, yr, 1e-5, "linear y");

    // Gradients accumulate onto non-zero starting values.
    auto dx = random_vec(static_cast<size_t>(N * in), 14), dw = random_vec(static_cast<size_t>(out * in), 15);
    auto db = random_vec(static_cast<size_t>(out), 16);
    auto dxr = cast_vec<double>(dx), dwr = cast_vec<double>(dw), dbr = cast_vec<double>(db);
    linear_backward<float>(lc.with_dx ? dx.data() : nullptr, dw.data(),
                           lc.bias ? db.data() : nullptr, dy.data(), x.data(), w.data(), N, in,
                           out);
    reference::linear_backward<double>(lc.with_dx ? dxr.data() : nullptr, dwr.data(),
                                       lc.bias ? dbr.data() : nullptr, cast_vec<double>(dy).data(),
                                       xd.data(), wd.data(), N, in, out);
    expect_close(dx, dxr, 1e-5, "linear dx");
    expect_close(dw, dwr, 1e-5, "linear dw");
    expect_close(db, dbr, 1e-5, "linear db");
  }
}

// The GEMMs may sum in another order with another thread count (reorder_bound over
// K = in for y, out for dx, N for dw); the bias and db are kumiko's own: bitwise.
TEST(Linear, Deterministic) {
  const int64_t N = 300, in = 65, out = 47;
  const auto x = random_vec(static_cast<size_t>(N * in), 20), w = random_vec(static_cast<size_t>(out * in), 21);
  const auto b = random_vec(static_cast<size_t>(out), 22), dy = random_vec(static_cast<size_t>(N * out), 23);
  // sum |terms| of every output: the double reference on absolute values.
  auto abs_of = [](const std::vector<float>& v) {
    std::vector<double> a(v.size());
    for (size_t i = 0; i < v.size(); ++i) a[i] = std::abs(double(v[i]));
    return a;
  };
  std::vector<double> my(static_cast<size_t>(N * out)), mdx(static_cast<size_t>(N * in), 0.0),
      mdw(static_cast<size_t>(out * in), 0.0), mdb(static_cast<size_t>(out), 0.0);
  reference::linear_forward<double>(my.data(), abs_of(x).data(), abs_of(w).data(), abs_of(b).data(), N, in, out);
  reference::linear_backward<double>(mdx.data(), mdw.data(), mdb.data(), abs_of(dy).data(), abs_of(x).data(),
                                     abs_of(w).data(), N, in, out);
  std::vector<double> bound = reorder_bound(in + 1, my);  // + the bias term
  for (const auto& part : {reorder_bound(out, mdx), reorder_bound(N, mdw), std::vector<double>(mdb.size(), 0.0)})
    bound.insert(bound.end(), part.begin(), part.end());
  check_determinism([&] {
    std::vector<float> y(static_cast<size_t>(N * out)), dx(static_cast<size_t>(N * in), 0.f), dw(static_cast<size_t>(out * in), 0.f),
        db(static_cast<size_t>(out), 0.f);
    linear_forward<float>(y.data(), x.data(), w.data(), b.data(), N, in, out);
    linear_backward<float>(dx.data(), dw.data(), db.data(), dy.data(), x.data(), w.data(), N, in,
                           out);
    y.insert(y.end(), dx.begin(), dx.end());
    y.insert(y.end(), dw.begin(), dw.end());
    y.insert(y.end(), db.begin(), db.end());
    return y;
  }, "linear", bound);
}

void run_layernorm(int64_t N, int64_t C) {
  const auto x = random_vec(static_cast<size_t>(N * C), 30, 2.0, 0.5), w = random_vec(static_cast<size_t>(C), 31, 0.5, 1.0);
  const auto b = random_vec(static_cast<size_t>(C), 32), dout = random_vec(static_cast<size_t>(N * C), 33);
  auto out = test::poisoned<float>(static_cast<size_t>(N * C)), mean = test::poisoned<float>(static_cast<size_t>(N)),
       rstd = test::poisoned<float>(static_cast<size_t>(N));
  layernorm_forward<float>(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N,
                           C, 1e-5f);
  std::vector<double> outr(out.size()), meanr(static_cast<size_t>(N)), rstdr(static_cast<size_t>(N));
  const auto xd = cast_vec<double>(x), wd = cast_vec<double>(w);
  reference::layernorm_forward<double>(outr.data(), meanr.data(), rstdr.data(), xd.data(),
                                       wd.data(), cast_vec<double>(b).data(), N, C, 1e-5);
  expect_close(out, outr, 1e-5, "layernorm out");
  expect_close(mean, meanr, 1e-5, "layernorm mean");
  expect_close(rstd, rstdr, 1e-5, "layernorm rstd");

  auto dx = random_vec(static_cast<size_t>(N * C), 34), dw = random_vec(static_cast<size_t>(C), 35);
  auto db = random_vec(static_cast<size_t>(C), 36);
  auto dxr = cast_vec<double>(dx), dwr = cast_vec<double>(dw), dbr = cast_vec<double>(db);
  layernorm_backward<float>(dx.data(), dw.data(), db.data(), dout.data(), x.data(), w.data(),
                            mean.data(), rstd.data(), N, C);
  reference::layernorm_backward<double>(dxr.data(), dwr.data(), dbr.data(),
                                        cast_vec<double>(dout).data(), xd.data(), wd.data(),
                                        meanr.data(), rstdr.data(), N, C);
  expect_close(dx, dxr, 1e-5, "layernorm dx");
  expect_close(dw, dwr, 1e-5, "layernorm dw");
  expect_close(db, dbr, 1e-5, "layernorm db");
}

TEST(LayerNorm, MatchesReference) {
  run_layernorm(7, 33);
  run_layernorm(301, 20);   // many row chunks
  run_layernorm(301, 150);  // chunk sums over 64-column blocks, the last one partial
}

void run_rmsnorm(int64_t N, int64_t C) {
  const auto x = random_vec(static_cast<size_t>(N * C), 40, 2.0, 0.5), w = random_vec(static_cast<size_t>(C), 41, 0.5, 1.0);
  const auto dout = random_vec(static_cast<size_t>(N * C), 43);
  auto out = test::poisoned<float>(static_cast<size_t>(N * C)), rstd = test::poisoned<float>(static_cast<size_t>(N));
  rmsnorm_forward<float>(out.data(), rstd.data(), x.data(), w.data(), N, C, 1e-6f);
  std::vector<double> outr(out.size()), rstdr(static_cast<size_t>(N));
  const auto xd = cast_vec<double>(x), wd = cast_vec<double>(w);
  reference::rmsnorm_forward<double>(outr.data(), rstdr.data(), xd.data(), wd.data(), N, C, 1e-6);
  expect_close(out, outr, 1e-5, "rmsnorm out");
  expect_close(rstd, rstdr, 1e-5, "rmsnorm rstd");
  auto dx = random_vec(static_cast<size_t>(N * C), 44), dw = random_vec(static_cast<size_t>(C), 45);
  auto dxr = cast_vec<double>(dx), dwr = cast_vec<double>(dw);
  rmsnorm_backward<float>(dx.data(), dw.data(), dout.data(), x.data(), w.data(), rstd.data(), N, C);
  reference::rmsnorm_backward<double>(dxr.data(), dwr.data(), cast_vec<double>(dout).data(),
                                      xd.data(), wd.data(), rstdr.data(), N, C);
  expect_close(dx, dxr, 1e-5, "rmsnorm dx");
  expect_close(dw, dwr, 1e-5, "rmsnorm dw");
}

TEST(RmsNorm, MatchesReference) {
  run_rmsnorm(7, 33);
  run_rmsnorm(301, 20);
  run_rmsnorm(301, 150);
}

TEST(Norms, DeterministicAcrossCallsAndThreads) {
  const int64_t N = 515, C = 67;
  const auto x = random_vec(static_cast<size_t>(N * C), 50), w = random_vec(static_cast<size_t>(C), 51);
  const auto b = random_vec(static_cast<size_t>(C), 52), dout = random_vec(static_cast<size_t>(N * C), 53);
  check_determinism([&] {
    std::vector<float> out(static_cast<size_t>(N * C)), mean(static_cast<size_t>(N)), rstd(static_cast<size_t>(N)),
        dx(static_cast<size_t>(N * C), 0.f), dw(static_cast<size_t>(C), 0.f), db(static_cast<size_t>(C), 0.f);
    layernorm_forward<float>(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N,
                             C, 1e-5f);
    layernorm_backward<float>(dx.data(), dw.data(), db.data(), dout.data(), x.data(), w.data(),
                              mean.data(), rstd.data(), N, C);
    rmsnorm_forward<float>(out.data(), rstd.data(), x.data(), w.data(), N, C, 1e-5f);
    rmsnorm_backward<float>(dx.data(), db.data(), dout.data(), x.data(), w.data(), rstd.data(), N,
                            C);
    out.insert(out.end(), dx.begin(), dx.end());
    out.insert(out.end(), dw.begin(), dw.end());
    out.insert(out.end(), db.begin(), db.end());
    return out;
  }, "norms");
}

}  // namespace
}  // namespace kumiko::cpu
