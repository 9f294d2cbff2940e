// gelu, swiglu, cross-entropy, embedding, positions, elementwise, adamw: fast float
// kernels vs the double reference, plus determinism.
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "kernels/cpu/reference/activations.h"
#include "kernels/cpu/reference/misc.h"
#include "kumiko/core/error.h"
#include "kumiko/ops/adamw.h"
#include "kumiko/ops/cross_entropy.h"
#include "kumiko/ops/elementwise.h"
#include "kumiko/ops/embedding.h"
#include "kumiko/ops/gelu.h"
#include "kumiko/ops/swiglu.h"
#include "tests/kernels/cpu/test_util.h"

namespace kumiko::cpu {
namespace {

using test::cast_vec;
using test::expect_close;
using test::random_vec;

TEST(Gelu, MatchesReference) {
  const int64_t n = 1001;
  auto x = random_vec(static_cast<size_t>(n), 100, 3.0);
  x[0] = -30.f;  // saturated tails
  x[1] = 30.f;
  const auto dout = random_vec(static_cast<size_t>(n), 101);
  auto out = test::poisoned<float>(static_cast<size_t>(n));
  gelu_forward<float>(out.data(), x.data(), n);
  std::vector<double> outr(static_cast<size_t>(n));
  reference::gelu_forward<double>(outr.data(), cast_vec<double>(x).data(), n);
  expect_close(out, outr, 1e-5, "gelu out");
  auto dx = random_vec(static_cast<size_t>(n), 102);
  auto dxr = cast_vec<double>(dx);
  gelu_backward<float>(dx.data(), dout.data(), x.data(), n, false);  // accumulates
  reference::gelu_backward<double>(dxr.data(), cast_vec<double>(dout).data(),
                                   cast_vec<double>(x).data(), n);
  expect_close(dx, dxr, 1e-5, "gelu dx");
  // Overwriting: a poisoned dx is not read, and dx may be dout itself.
  std::vector<double> gr(static_cast<size_t>(n), 0.0);
  reference::gelu_backward<double>(gr.data(), cast_vec<double>(dout).data(), cast_vec<double>(x).data(), n);
  auto fresh = test::poisoned<float>(static_cast<size_t>(n));
  gelu_backward<float>(fresh.data(), dout.data(), x.data(), n, true);
  expect_close(fresh, gr, 1e-5, "gelu dx overwritten");
  auto inplace = dout;
  gelu_backward<float>(inplace.data(), inplace.data(), x.data(), n, true);
  expect_close(inplace, gr, 1e-5, "gelu dx overwritten in place");
}

TEST(SwiGlu, MatchesReference) {
  const int64_t n = 1001;
  auto gate = random_vec(static_cast<size_t>(n), 110, 3.0);
  gate[0] = -50.f;
  gate[1] = 50.f;
  const auto up = random_vec(static_cast<size_t>(n), 111), dout = random_vec(static_cast<size_t>(n), 112);
  auto out = test::poisoned<float>(static_cast<size_t>(n));
  swiglu_forward<float>(out.data(), gate.data(), up.data(), n);
  std::vector<double> outr(static_cast<size_t>(n));
  const auto gd = cast_vec<double>(gate), ud = cast_vec<double>(up);
  reference::swiglu_forward<double>(outr.data(), gd.data(), ud.data(), n);
  expect_close(out, outr, 1e-5, "swiglu out");
  auto dg = random_vec(static_cast<size_t>(n), 113), du = random_vec(static_cast<size_t>(n), 114);
  auto dgr = cast_vec<double>(dg), dur = cast_vec<double>(du);
  swiglu_backward<float>(dg.data(), du.data(), dout.data(), gate.data(), up.data(), n, false);  // accumulates
  reference::swiglu_backward<double>(dgr.data(), dur.data(), cast_vec<double>(dout).data(),
                                     gd.data(), ud.data(), n);
  expect_close(dg, dgr, 1e-5, "swiglu dgate");
  expect_close(du, dur, 1e-5, "swiglu dup");
  // Overwriting: poisoned outputs are not read, and dgate may be dout itself.
  std::vector<double> dg0(static_cast<size_t>(n), 0.0), du0(static_cast<size_t>(n), 0.0);
  reference::swiglu_backward<double>(dg0.data(), du0.data(), cast_vec<double>(dout).data(), gd.data(), ud.data(), n);
  auto dg1 = dout;
  auto du1 = test::poisoned<float>(static_cast<size_t>(n));
  swiglu_backward<float>(dg1.data(), du1.data(), dg1.data(), gate.data(), up.data(), n, true);
  expect_close(dg1, dg0, 1e-5, "swiglu dgate overwritten in place");
  expect_close(du1, du0, 1e-5, "swiglu dup overwritten");
}

TEST(CrossEntropy, MatchesReferenceAndAliases) {
  const int64_t N = 7, V = 101;
  const auto logits = random_vec(static_cast<size_t>(N * V), 120, 4.0);
  const auto targets = test::random_ids(static_cast<size_t>(N), int32_t(V), 121);
  std::vector<double> lr(static_cast<size_t>(N)), dr(static_cast<size_t>(N * V));
  reference::cross_entropy<double>(lr.data(), dr.data(), cast_vec<double>(logits).data(),
                                   targets.data(), N, V, 0.25);
  auto losses = test::poisoned<float>(static_cast<size_t>(N));
  cross_entropy_forward<float>(losses.data(), logits.data(), targets.data(), N, V);
  expect_close(losses, lr, 1e-5, "ce forward losses");
  auto dlogits = test::poisoned<float>(static_cast<size_t>(N * V));
  losses = test::poisoned<float>(static_cast<size_t>(N));
  cross_entropy_forward_backward<float>(losses.data(), dlogits.data(), logits.data(),
                                        targets.data(), N, V, 0.25f);
  expect_close(losses, lr, 1e-5, "ce losses");
  expect_close(dlogits, dr, 1e-5, "ce dlogits");
  auto inplace = logits;  // dlogits aliasing logits
  losses = test::poisoned<float>(static_cast<size_t>(N));
  cross_entropy_forward_backward<float>(losses.data(), inplace.data(), inplace.data(),
                                        targets.data(), N, V, 0.25f);
  expect_close(losses, lr, 1e-5, "ce losses (aliased)");
  expect_close(inplace, dr, 1e-5, "ce dlogits (aliased)");
}

// The vocabulary-parallel passes (tp > 1) over uneven column shards, combined as the
// tensor-parallel group does (max of mx, sums of sum and tgt), against the reference.
TEST(CrossEntropy, ShardsMatchReference) {
  const int64_t N = 9, V = 203, split = 77;  // shards [0, 77) and [77, 203); 203 = no vector multiple
  const auto logits = random_vec(static_cast<size_t>(N * V), 122, 4.0);
  const auto targets = test::random_ids(static_cast<size_t>(N), int32_t(V), 123);
  std::vector<double> lr(static_cast<size_t>(N)), dr(static_cast<size_t>(N * V));
  reference::cross_entropy<double>(lr.data(), dr.data(), cast_vec<double>(logits).data(), targets.data(), N, V,
                                   0.25);
  for (const bool backward : {false, true}) {
    const int64_t v0s[2] = {0, split}, vls[2] = {split, V - split};
    std::vector<std::vector<float>> shard(2);
    std::vector<float> mx(static_cast<size_t>(N), -std::numeric_limits<float>::infinity());
    std::vector<float> sum(static_cast<size_t>(N), 0.0f), tgt(static_cast<size_t>(N), 0.0f);
    for (int r = 0; r < 2; ++r) {
      shard[r].resize(static_cast<size_t>(N * vls[r]));
      for (int64_t n = 0; n < N; ++n)
        for (int64_t v = 0; v < vls[r]; ++v) shard[r][n * vls[r] + v] = logits[n * V + v0s[r] + v];
      auto m = test::poisoned<float>(static_cast<size_t>(N));
      ce_shard_max(m.data(), shard[r].data(), N, vls[r]);
      for (int64_t n = 0; n < N; ++n) mx[n] = std::max(mx[n], m[n]);
    }
    for (int r = 0; r < 2; ++r) {
      auto s = test::poisoned<float>(static_cast<size_t>(N)), t = test::poisoned<float>(static_cast<size_t>(N));
      ce_shard_sums(s.data(), t.data(), shard[r].data(), mx.data(), targets.data(), N, vls[r], v0s[r]);
      for (int64_t n = 0; n < N; ++n) {
        sum[n] += s[n];
        tgt[n] += t[n];
      }
    }
    std::vector<float> d(static_cast<size_t>(N * V));
    for (int r = 0; r < 2; ++r) {
      auto losses = test::poisoned<float>(static_cast<size_t>(N));
      ce_shard_finish(losses.data(), shard[r].data(), mx.data(), sum.data(), tgt.data(), targets.data(), N, vls[r],
                      v0s[r], backward, 0.25f);
      expect_close(losses, lr, 1e-5, "ce shard losses");
      for (int64_t n = 0; n < N; ++n)
        for (int64_t v = 0; v < vls[r]; ++v) d[n * V + v0s[r] + v] = shard[r][n * vls[r] + v];
    }
    if (backward) expect_close(d, dr, 1e-5, "ce shard dlogits");
  }
}

TEST(CrossEntropy, RejectsTargetOutsideVocabulary) {
  const auto logits = random_vec(12, 130);
  std::vector<int32_t> targets = {1, 4};  // V = 4
  std::vector<float> losses(2);
  EXPECT_THROW(cross_entropy_forward<float>(losses.data(), logits.data(), targets.data(), 2, 4),
               kumiko::UserError);
}

TEST(Embedding, ForwardBackwardPositionsMatchReference) {
  const int64_t V = 11, C = 33, B = 3, T = 7, N = B * T;
  const auto table = random_vec(static_cast<size_t>(V * C), 140), pos = random_vec(static_cast<size_t>(T * C), 141);
  const auto ids = test::random_ids(static_cast<size_t>(N), int32_t(V), 142);  // repeats ids
  const auto dout = random_vec(static_cast<size_t>(N * C), 143);
  auto out = test::poisoned<float>(static_cast<size_t>(N * C));
  embedding_forward<float>(out.data(), ids.data(), table.data(), N, C);
  std::vector<double> outr(static_cast<size_t>(N * C));
  reference::embedding_forward<double>(outr.data(), ids.data(), cast_vec<double>(table).data(), N,
                                       C);
  add_positions_forward<float>(out.data(), pos.data(), B, T, C);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c) outr[static_cast<size_t>(n * C + c)] += pos[static_cast<size_t>((n % T) * C + c)];
  expect_close(out, outr, 1e-6, "embedding + positions");

  auto dtable = random_vec(static_cast<size_t>(V * C), 144), dpos = random_vec(static_cast<size_t>(T * C), 145);
  auto dtr = cast_vec<double>(dtable), dpr = cast_vec<double>(dpos);
  embedding_backward<float>(dtable.data(), dout.data(), ids.data(), N, C);
  add_positions_backward<float>(dpos.data(), dout.data(), B, T, C);
  reference::embedding_backward<double>(dtr.data(), cast_vec<double>(dout).data(), ids.data(), N,
                                        C);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c) dpr[static_cast<size_t>((n % T) * C + c)] += dout[static_cast<size_t>(n * C + c)];
  expect_close(dtable, dtr, 1e-5, "dtable");
  expect_close(dpos, dpr, 1e-5, "dpos");
}

TEST(Elementwise, AddScaleSumSquares) {
  const int64_t n = 100003;
  const auto a = random_vec(static_cast<size_t>(n), 150), b = random_vec(static_cast<size_t>(n), 151);
  auto out = test::poisoned<float>(static_cast<size_t>(n));
  add<float>(out.data(), a.data(), b.data(), n);
  std::vector<double> ref(static_cast<size_t>(n));
  for (size_t i = 0; i < ref.size(); ++i) ref[i] = double(a[i]) + double(b[i]);
  expect_close(out, ref, 1e-6, "add");
  add_inplace<float>(out.data(), a.data(), n);
  scale_inplace<float>(out.data(), 0.5f, n);
  for (size_t i = 0; i < ref.size(); ++i) ref[i] = (ref[i] + a[i]) * 0.5;
  expect_close(out, ref, 1e-6, "add_inplace + scale_inplace");
  double ss = 0;
  for (float x : a) ss += double(x) * double(x);
  EXPECT_NEAR(sum_squares<float>(a.data(), n), ss, 1e-10 * ss);
  double s1 = 0, s2 = 0;
  test::with_threads(1, [&] { s1 = sum_squares<float>(a.data(), n); });
  test::with_threads(2, [&] { s2 = sum_squares<float>(a.data(), n); });
  EXPECT_EQ(s1, s2);  // fixed chunks: independent of the thread count
}

TEST(AdamW, MatchesReferenceOverSteps) {
  const int64_t n = (int64_t{1} << 17) + 1003;  // across the many-array call's 2^16-element pieces
  auto p = random_vec(static_cast<size_t>(n), 160), m = random_vec(static_cast<size_t>(n), 161, 0.1);
  auto v = random_vec(static_cast<size_t>(n), 162, 0.1);
  for (auto& x : v) x = x * x;
  auto pr = cast_vec<double>(p), mr = cast_vec<double>(m), vr = cast_vec<double>(v);
  for (int64_t step = 1; step <= 3; ++step) {
    const auto g = random_vec(static_cast<size_t>(n), 163 + uint32_t(step));
    adamw_update<float>(p.data(), g.data(), m.data(), v.data(), n, 1e-2, 0.9, 0.95, 1e-8, 0.1, 0.5,
                        step);
    reference::adamw_update<double>(pr.data(), cast_vec<double>(g).data(), mr.data(), vr.data(), n,
                                    1e-2, 0.9, 0.95, 1e-8, 0.1, 0.5, step);
  }
  expect_close(p, pr, 1e-5, "adamw param");
  expect_close(m, mr, 1e-5, "adamw m");
  expect_close(v, vr, 1e-5, "adamw v");
}

template <typename T>
bool same_bytes(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
}

// Many slices in one call (what the CPU backends' adamw() makes of a model): each slice
// gets its own weight decay and the same bits as a call of its own, at 1 and 2 threads;
// sizes cross the 2^16-element pieces (and n = 0); fp32 with and without a bf16
// working copy, double.
template <typename T>
void adamw_slices_match_one_by_one(bool with_work) {
  const std::vector<int64_t> sizes = {1000, 0, (int64_t{1} << 16) + 17, 1, (int64_t{1} << 17), 333};
  struct Arrays {
    std::vector<T> p, g, m, v;
    std::vector<bf16> w;
  };
  auto make = [&] {
    std::vector<Arrays> a;
    uint32_t seed = 400;
    for (const int64_t n : sizes) {
      const auto sz = static_cast<size_t>(n);
      Arrays x{cast_vec<T>(random_vec(sz, seed)), cast_vec<T>(random_vec(sz, seed + 1)),
               cast_vec<T>(random_vec(sz, seed + 2, 0.1)), cast_vec<T>(random_vec(sz, seed + 3, 0.1)),
               std::vector<bf16>(sz)};
      for (auto& e : x.v) e = e * e;
      a.push_back(std::move(x));
      seed += 4;
    }
    return a;
  };
  auto decay_of = [](size_t k) { return k % 2 ? 0.0 : 0.1 * double(k + 1); };
  const auto initial = make();
  auto want = make();
  for (size_t k = 0; k < sizes.size(); ++k) {
    auto& x = want[k];
    for (int64_t step = 1; step <= 2; ++step) {
      if constexpr (std::is_same_v<T, float>) {
        if (with_work) {
          adamw_update(x.p.data(), x.g.data(), x.m.data(), x.v.data(), x.w.data(), sizes[k], 1e-2, 0.9, 0.95, 1e-8,
                       decay_of(k), 0.5, step);
          continue;
        }
      }
      adamw_update<T>(x.p.data(), x.g.data(), x.m.data(), x.v.data(), sizes[k], 1e-2, 0.9, 0.95, 1e-8, decay_of(k),
                      0.5, step);
    }
  }
  for (const int threads : {1, 2}) {
    auto got = make();
    std::vector<AdamWSlice<T>> slices;
    for (size_t k = 0; k < sizes.size(); ++k) {
      auto& x = got[k];
      slices.push_back({x.p.data(), x.g.data(), x.m.data(), x.v.data(), with_work ? x.w.data() : nullptr, sizes[k],
                        decay_of(k)});
    }
    test::with_threads(threads, [&] {
      for (int64_t step = 1; step <= 2; ++step)
        adamw_update(slices.data(), slices.size(), 1e-2, 0.9, 0.95, 1e-8, 0.5, step);
    });
    for (size_t k = 0; k < sizes.size(); ++k) {
      SCOPED_TRACE("slice " + std::to_string(k) + ", " + std::to_string(threads) + " thread(s)");
      // Bytes compared as vectors: an empty slice's data() may be null, and memcmp's arguments may not.
      EXPECT_TRUE(same_bytes(got[k].p, want[k].p));
      EXPECT_TRUE(same_bytes(got[k].m, want[k].m));
      EXPECT_TRUE(same_bytes(got[k].v, want[k].v));
      EXPECT_TRUE(same_bytes(got[k].w, want[k].w));
      if (sizes[k] > 0) {  // the update ran at all
        EXPECT_FALSE(same_bytes(got[k].p, initial[k].p));
      }
    }
  }
}

TEST(AdamW, SlicesMatchOneByOne) {
  adamw_slices_match_one_by_one<float>(false);
  adamw_slices_match_one_by_one<float>(true);
  adamw_slices_match_one_by_one<double>(false);
}

TEST(Pointwise, DeterministicAcrossCallsAndThreads) {
  const int64_t N = 37, V = 513, C = 40;
  const auto logits = random_vec(static_cast<size_t>(N * V), 170);
  const auto targets = test::random_ids(static_cast<size_t>(N), int32_t(V), 171);
  const auto ids = test::random_ids(static_cast<size_t>(N), 5, 172);
  const auto dout = random_vec(static_cast<size_t>(N * C), 173);
  test::check_determinism([&] {
    std::vector<float> losses(static_cast<size_t>(N)), d(static_cast<size_t>(N * V)), dtable(static_cast<size_t>(5 * C), 0.f),
        g(static_cast<size_t>(N * C)), dpos(static_cast<size_t>(C), 0.f);
    cross_entropy_forward_backward<float>(losses.data(), d.data(), logits.data(), targets.data(),
                                          N, V, 1.0f / float(N));
    embedding_backward<float>(dtable.data(), dout.data(), ids.data(), N, C);
    add_positions_backward<float>(dpos.data(), dout.data(), N, 1, C);
    gelu_forward<float>(g.data(), dout.data(), N * C);
    for (auto* vec : {&d, &dtable, &g, &dpos}) losses.insert(losses.end(), vec->begin(), vec->end());
    return losses;
  }, "pointwise");
}

}  // namespace
}  // namespace kumiko::cpu
