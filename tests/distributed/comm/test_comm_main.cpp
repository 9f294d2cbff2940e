// Collectives of the MPI communicator against values computed locally, at any
// rank count (registered for 1, 2, 3 and 4 ranks). Every rank generates every
// rank's data from the same seeds, so the expected result of a collective is a
// local computation. Only rank 0 prints; a failure on any rank fails every rank.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <random>
#include <type_traits>
#include <vector>

#include "kumiko/comm/communicator.h"
#include "kumiko/config/config.h"
#include "kumiko/parallel/grid.h"

namespace kumiko::comm {
namespace {

Communicator& w() { return world(); }

// Rank r's data for a test: seeded by (test seed, r), never all zeros.
template <typename T>
std::vector<T> rank_data(uint32_t seed, int r, int64_t n) {
  std::mt19937 gen(seed * 1000u + static_cast<uint32_t>(r) + 1u);
  std::vector<T> v(n);
  for (auto& x : v) {
    if constexpr (std::is_floating_point_v<T>) {
      x = static_cast<T>(std::uniform_real_distribution<double>(-4.0, 4.0)(gen));
    } else {
      x = static_cast<T>(std::uniform_int_distribution<int64_t>(-1000, 1000)(gen));
    }
    if (x == T(0)) x = T(1);
  }
  return v;
}

// Expected reduction of all ranks' data, in rank order (the order MPI sums is not
// fixed, so floats compare with a tolerance).
template <typename T>
std::vector<T> expected_reduce(uint32_t seed, int64_t n, ReduceOp op, int size) {
  std::vector<T> out = rank_data<T>(seed, 0, n);
  for (int r = 1; r < size; ++r) {
    const auto d = rank_data<T>(seed, r, n);
    for (int64_t i = 0; i < n; ++i)
      out[i] = op == ReduceOp::max ? std::max(out[i], d[i]) : out[i] + d[i];
  }
  if (op == ReduceOp::avg)
    for (auto& x : out) x /= static_cast<T>(size);
  return out;
}

template <typename T>
void expect_close(const std::vector<T>& got, const std::vector<T>& want, const char* what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < got.size(); ++i) {
    if constexpr (std::is_floating_point_v<T>) {
      const double tol =
          (std::is_same_v<T, float> ? 1e-5 : 1e-12) * (1.0 + std::abs(double(want[i])));
      ASSERT_NEAR(got[i], want[i], tol) << what << " at " << i << " on rank " << w().rank();
    } else {
      ASSERT_EQ(got[i], want[i]) << what << " at " << i << " on rank " << w().rank();
    }
  }
}

template <typename T>
class AllReduceTyped : public ::testing::Test {};
using Types = ::testing::Types<float, double, int32_t, int64_t>;
TYPED_TEST_SUITE(AllReduceTyped, Types);

TYPED_TEST(AllReduceTyped, SumAvgMaxMatchLocalReduction) {
  using T = TypeParam;
  const int64_t n = 1037;  // not a multiple of anything convenient
  for (ReduceOp op : {ReduceOp::sum, ReduceOp::avg, ReduceOp::max}) {
    const uint32_t seed = 11 + static_cast<uint32_t>(op);
    auto data = rank_data<T>(seed, w().rank(), n);
    w().all_reduce(data.data(), n, op);
    expect_close(data, expected_reduce<T>(seed, n, op, w().size()), "all_reduce");
  }
}

TYPED_TEST(AllReduceTyped, NonBlockingMatchesBlocking) {
  using T = TypeParam;
  const int64_t n = 517;
  auto a = rank_data<T>(21, w().rank(), n);
  auto b = rank_data<T>(22, w().rank(), n);
  // Two requests in flight at once, completed in reverse order.
  auto ra = w().iall_reduce(a.data(), n, ReduceOp::sum);
  auto rb = w().iall_reduce(b.data(), n, ReduceOp::avg);
  rb->wait();
  ra->wait();
  ra->wait();  // idempotent
  EXPECT_TRUE(ra->test());
  expect_close(a, expected_reduce<T>(21, n, ReduceOp::sum, w().size()), "iall_reduce sum");
  expect_close(b, expected_reduce<T>(22, n, ReduceOp::avg, w().size()), "iall_reduce avg");
}

// Uneven counts with a zero for rank 1 (when there is one): rank r gets 3 + 2r
// elements, except rank 1 which gets none.
std::vector<int64_t> uneven_counts(int size) {
  std::vector<int64_t> c(size);
  for (int r = 0; r < size; ++r) c[r] = r == 1 ? 0 : 3 + 2 * r;
  return c;
}

TEST(ReduceScatter, UnevenCountsIncludingZero) {
  const auto counts = uneven_counts(w().size());
  const int64_t total = std::accumulate(counts.begin(), counts.end(), int64_t{0});
  const int64_t offset = std::accumulate(counts.begin(), counts.begin() + w().rank(), int64_t{0});
  const int64_t mine = counts[w().rank()];
  for (ReduceOp op : {ReduceOp::sum, ReduceOp::avg, ReduceOp::max}) {
    const uint32_t seed = 31 + static_cast<uint32_t>(op);
    const auto send = rank_data<double>(seed, w().rank(), total);
    std::vector<double> recv(std::max<int64_t>(mine, 1), -7.0);
    w().reduce_scatter(send.data(), recv.data(), counts, op);
    const auto full = expected_reduce<double>(seed, total, op, w().size());
    recv.resize(mine);
    expect_close(recv, std::vector<double>(full.begin() + offset, full.begin() + offset + mine),
                 "reduce_scatter");
  }
  // Non-blocking, float.
  const auto send = rank_data<float>(35, w().rank(), total);
  std::vector<float> recv(std::max<int64_t>(mine, 1));
  w().ireduce_scatter(send.data(), recv.data(), counts, ReduceOp::sum)->wait();
  const auto full = expected_reduce<float>(35, total, ReduceOp::sum, w().size());
  recv.resize(mine);
  expect_close(recv, std::vector<float>(full.begin() + offset, full.begin() + offset + mine),
               "ireduce_scatter");
}

TEST(AllGather, UnevenCountsIncludingZeroInPlace) {
  const auto counts = uneven_counts(w().size());
  const int64_t total = std::accumulate(counts.begin(), counts.end(), int64_t{0});
  // Every rank's expected full buffer: block r is rank r's data.
  std::vector<int64_t> want;
  for (int r = 0; r < w().size(); ++r) {
    const auto d = rank_data<int64_t>(41, r, counts[r]);
    want.insert(want.end(), d.begin(), d.end());
  }
  std::vector<int64_t> data(total, -99);  // other ranks' blocks are overwritten
  const int64_t offset = std::accumulate(counts.begin(), counts.begin() + w().rank(), int64_t{0});
  const auto mine = rank_data<int64_t>(41, w().rank(), counts[w().rank()]);
  std::copy(mine.begin(), mine.end(), data.begin() + offset);
  w().all_gather(data.data(), counts);
  expect_close(data, want, "all_gather");

  std::vector<float> f(total, 0.5f);
  std::vector<float> fwant;
  for (int r = 0; r < w().size(); ++r) {
    const auto d = rank_data<float>(42, r, counts[r]);
    fwant.insert(fwant.end(), d.begin(), d.end());
  }
  const auto fmine = rank_data<float>(42, w().rank(), counts[w().rank()]);
  std::copy(fmine.begin(), fmine.end(), f.begin() + offset);
  w().iall_gather(f.data(), counts)->wait();
  expect_close(f, fwant, "iall_gather");
}

TEST(Broadcast, FromNonZeroRoot) {
  const int root = w().size() - 1;  // rank 0 only when there is one rank
  const int64_t n = 257;
  auto data = w().rank() == root ? rank_data<float>(51, root, n) : std::vector<float>(n, 0.25f);
  w().broadcast(data.data(), n, root);
  expect_close(data, rank_data<float>(51, root, n), "broadcast");
  auto ints = w().rank() == root ? rank_data<int32_t>(52, root, n) : std::vector<int32_t>(n, 3);
  w().broadcast(ints.data(), n, root);
  expect_close(ints, rank_data<int32_t>(52, root, n), "broadcast i32");
}

TEST(SendRecv, Ring) {
  if (w().size() < 2) GTEST_SKIP() << "needs two ranks";
  const int size = w().size(), r = w().rank();
  const int next = (r + 1) % size, prev = (r + size - 1) % size;
  const int64_t n = 129;
  const auto out = rank_data<double>(61, r, n);
  std::vector<double> in(n, 0.0);
  // Even ranks send first, odd ranks receive first: no deadlock even if send blocks.
  if (r % 2 == 0) {
    w().send(out.data(), n, next, 7);
    w().recv(in.data(), n, prev, 7);
  } else {
    w().recv(in.data(), n, prev, 7);
    w().send(out.data(), n, next, 7);
  }
  expect_close(in, rank_data<double>(61, prev, n), "ring recv");
}

// --- bfloat16 (DType::bf16): MPI reduces it with kumiko's own ops (sum in fp32,
// rounded to nearest even after every addition; max). The host conversions below
// are the test's own, independent of the communicator's.
uint16_t to_bf16(float f) {  // round to nearest even (no NaN inputs here)
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
float from_bf16(uint16_t b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
std::vector<BFloat16> from_bits(const std::vector<uint16_t>& v) {
  std::vector<BFloat16> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i].bits = v[i];
  return out;
}

void expect_bits(const std::vector<BFloat16>& got, const std::vector<uint16_t>& want, const char* what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < got.size(); ++i) {
    char msg[160];
    std::snprintf(msg, sizeof msg, "%s at %zu on rank %d: got 0x%04x (%.9g), want 0x%04x (%.9g)", what, i,
                  w().rank(), got[i].bits, double(from_bf16(got[i].bits)), want[i],
                  double(from_bf16(want[i])));
    ASSERT_EQ(got[i].bits, want[i]) << msg;
  }
}

// Rank r's random bf16 data: fp32 values of magnitude [1/16, 4) with random sign,
// rounded to bf16 (so input rounding matters), never zero. Any sum of up to four of
// them is exact in fp32.
std::vector<uint16_t> rank_bf16(uint32_t seed, int r, int64_t n) {
  std::mt19937 gen(seed * 1000u + static_cast<uint32_t>(r) + 1u);
  std::uniform_real_distribution<float> mag(0.0625f, 4.0f);
  std::bernoulli_distribution neg(0.5);
  std::vector<uint16_t> v(n);
  for (auto& b : v) b = to_bf16(neg(gen) ? -mag(gen) : mag(gen));
  return v;
}

// Random bit patterns (NaNs, infinities, subnormals included), never zero: for
// operations that only move data.
std::vector<uint16_t> rank_bf16_bits(uint32_t seed, int r, int64_t n) {
  std::mt19937 gen(seed * 1000u + static_cast<uint32_t>(r) + 1u);
  std::uniform_int_distribution<int> any(1, 0xffff);
  std::vector<uint16_t> v(n);
  for (auto& b : v) b = static_cast<uint16_t>(any(gen));
  return v;
}

// Data whose bf16 sum over `size` ranks is exact in every reduction order except
// the last addition, which is a tie: per element, size-1 ranks hold even integers
// e > d and one rank an odd integer o, with total T = 256 + d (d odd), so every
// partial sum that lacks a term is an integer below 256 or an even one below 512
// (exact in bf16) and T is odd in [257, 511], halfway between two bf16 values.
// Everything is then scaled by +-2^s. Returns [rank][element]; with one rank,
// plain random bf16 values.
std::vector<std::vector<uint16_t>> tie_data(uint32_t seed, int64_t n, int size) {
  std::vector<std::vector<uint16_t>> out(size, std::vector<uint16_t>(n));
  std::mt19937 gen(seed);
  if (size == 1) {
    out[0] = rank_bf16(seed, 0, n);
    return out;
  }
  const int k = size - 1;
  std::vector<int> terms(size);
  for (int64_t i = 0; i < n; ++i) {
    const int dmax = k == 1 ? 253 : (254 - k) / (k - 1);
    int d, e_sum;
    do {
      d = 2 * std::uniform_int_distribution<int>(0, (dmax - 1) / 2)(gen) + 1;
      e_sum = 0;
      for (int j = 0; j < k; ++j) {
        terms[j] = d + 1 + 2 * std::uniform_int_distribution<int>(0, 40)(gen);
        e_sum += terms[j];
      }
    } while (e_sum > 255 + d);  // o = 256 + d - e_sum >= 1
    terms[k] = 256 + d - e_sum;
    std::shuffle(terms.begin(), terms.end(), gen);
    const float scale = (std::bernoulli_distribution(0.5)(gen) ? -1.0f : 1.0f) *
                        std::ldexp(1.0f, std::uniform_int_distribution<int>(-20, 20)(gen));
    for (int r = 0; r < size; ++r) out[r][i] = to_bf16(static_cast<float>(terms[r]) * scale);
  }
  return out;
}

// Expected bf16 sum: the exact fp32 sum of the (bf16) inputs, rounded to bf16.
std::vector<uint16_t> bf16_sum_of(const std::vector<std::vector<uint16_t>>& data) {
  std::vector<uint16_t> out(data[0].size());
  for (size_t i = 0; i < out.size(); ++i) {
    double s = 0;
    for (const auto& d : data) s += from_bf16(d[i]);
    EXPECT_EQ(static_cast<double>(static_cast<float>(s)), s) << "test data: sum not exact in fp32";
    out[i] = to_bf16(static_cast<float>(s));
  }
  return out;
}
// ReduceOp::avg as documented: the bf16 sum divided by the size in fp32, rounded.
std::vector<uint16_t> bf16_avg_of(const std::vector<uint16_t>& sum, int size) {
  std::vector<uint16_t> out(sum.size());
  for (size_t i = 0; i < sum.size(); ++i) out[i] = to_bf16(from_bf16(sum[i]) / static_cast<float>(size));
  return out;
}

TEST(Bf16, HostHelpersRoundToNearestEven) {
  EXPECT_EQ(to_bf16(1.0f), 0x3f80);
  EXPECT_EQ(to_bf16(1.0f + 0x1p-8f), 0x3f80);          // tie, even stays
  EXPECT_EQ(to_bf16(1.0f + 3 * 0x1p-8f), 0x3f82);      // tie, odd rounds up
  EXPECT_EQ(to_bf16(1.0f + 0x1p-8f + 0x1p-20f), 0x3f81);  // above the tie
  EXPECT_EQ(to_bf16(-257.0f), 0xc380);                 // -256
  EXPECT_EQ(to_bf16(259.0f), 0x4382);                  // 260
  EXPECT_EQ(from_bf16(0x4382), 260.0f);
  EXPECT_EQ(dtype_bytes(DType::bf16), 2u);
  static_assert(sizeof(BFloat16) == 2);
}

TEST(Bf16, AllReduceSumIsRoundedExactSumAtTies) {
  const int size = w().size(), r = w().rank();
  const int64_t n = 1031;
  const auto all = tie_data(81, n, size);
  const auto want = bf16_sum_of(all);
  if (size > 1) {
    // The data exercises rounding: ties resolve both up and down (not truncation).
    int64_t up = 0;
    for (int64_t i = 0; i < n; ++i) {
      double s = 0;
      for (const auto& d : all) s += from_bf16(d[i]);
      up += std::abs(double(from_bf16(want[i]))) > std::abs(s);
    }
    EXPECT_GT(up, n / 4);
    EXPECT_LT(up, 3 * n / 4);
  }
  auto data = from_bits(all[r]);
  w().all_reduce(data.data(), n, ReduceOp::sum);
  expect_bits(data, want, "bf16 all_reduce sum");
}

TEST(Bf16, AllReduceSumOfRandomValues) {
  const int size = w().size(), r = w().rank();
  const int64_t n = 1037;
  std::vector<std::vector<uint16_t>> all;
  for (int q = 0; q < size; ++q) all.push_back(rank_bf16(82, q, n));
  const auto want = bf16_sum_of(all);
  auto data = from_bits(all[r]);
  w().all_reduce(data.data(), n, ReduceOp::sum);
  if (size <= 2) {
    // One addition: exactly the rounded fp32 sum.
    expect_bits(data, want, "bf16 all_reduce sum (random)");
    return;
  }
  // More ranks: every partial sum is rounded to bf16 (order not fixed), so within
  // half an ulp (2^-8 relative) per addition plus the reference's own rounding.
  for (int64_t i = 0; i < n; ++i) {
    double exact = 0, abs_sum = 0;
    for (const auto& d : all) {
      exact += from_bf16(d[i]);
      abs_sum += std::abs(from_bf16(d[i]));
    }
    const double tol = size * 0x1p-8 * abs_sum * 1.02;
    ASSERT_NEAR(from_bf16(data[i].bits), exact, tol) << "at " << i << " on rank " << r;
    ASSERT_NEAR(from_bf16(data[i].bits), from_bf16(want[i]), 2 * tol) << "at " << i;
  }
}

TEST(Bf16, AllReduceMax) {
  const int size = w().size(), r = w().rank();
  const int64_t n = 1033;
  std::vector<std::vector<uint16_t>> all;
  for (int q = 0; q < size; ++q) all.push_back(rank_bf16(83, q, n));
  std::vector<uint16_t> want(n);
  for (int64_t i = 0; i < n; ++i) {
    want[i] = all[0][i];
    for (int q = 1; q < size; ++q)
      if (from_bf16(all[q][i]) > from_bf16(want[i])) want[i] = all[q][i];
  }
  auto data = from_bits(all[r]);
  w().all_reduce(data.data(), n, ReduceOp::max);
  expect_bits(data, want, "bf16 all_reduce max");
}

TEST(Bf16, AllReduceAvgBlockingAndNonBlocking) {
  const int size = w().size(), r = w().rank();
  const int64_t n = 1029;
  const auto all = tie_data(84, n, size);
  const auto want = bf16_avg_of(bf16_sum_of(all), size);
  auto data = from_bits(all[r]);
  w().all_reduce(data.data(), n, ReduceOp::avg);
  expect_bits(data, want, "bf16 all_reduce avg");

  const auto all2 = tie_data(85, n, size);
  auto a = from_bits(all2[r]);
  auto b = from_bits(all[r]);
  auto ra = w().iall_reduce(a.data(), n, ReduceOp::avg);
  auto rb = w().iall_reduce(b.data(), n, ReduceOp::sum);
  rb->wait();
  ra->wait();
  expect_bits(a, bf16_avg_of(bf16_sum_of(all2), size), "bf16 iall_reduce avg");
  expect_bits(b, bf16_sum_of(all), "bf16 iall_reduce sum");
}

TEST(Bf16, ReduceScatterSumAndAvgUnevenCounts) {
  const int size = w().size(), r = w().rank();
  const auto counts = uneven_counts(size);
  const int64_t total = std::accumulate(counts.begin(), counts.end(), int64_t{0});
  const int64_t offset = std::accumulate(counts.begin(), counts.begin() + r, int64_t{0});
  const int64_t mine = counts[r];
  for (ReduceOp op : {ReduceOp::sum, ReduceOp::avg}) {
    const uint32_t seed = 91 + static_cast<uint32_t>(op);
    const auto all = tie_data(seed, total, size);
    auto full = bf16_sum_of(all);
    if (op == ReduceOp::avg) full = bf16_avg_of(full, size);
    const auto send = from_bits(all[r]);
    std::vector<BFloat16> recv(std::max<int64_t>(mine, 1), BFloat16{0x7fc1});
    if (op == ReduceOp::sum)
      w().reduce_scatter(send.data(), recv.data(), counts, op);
    else
      w().ireduce_scatter(send.data(), recv.data(), counts, op)->wait();
    recv.resize(mine);
    expect_bits(recv, std::vector<uint16_t>(full.begin() + offset, full.begin() + offset + mine),
                op == ReduceOp::sum ? "bf16 reduce_scatter sum" : "bf16 ireduce_scatter avg");
  }
}

TEST(Bf16, AllGatherUnevenCountsInPlace) {
  const int size = w().size(), r = w().rank();
  const auto counts = uneven_counts(size);
  const int64_t total = std::accumulate(counts.begin(), counts.end(), int64_t{0});
  const int64_t offset = std::accumulate(counts.begin(), counts.begin() + r, int64_t{0});
  std::vector<uint16_t> want;
  for (int q = 0; q < size; ++q) {
    const auto d = rank_bf16_bits(101, q, counts[q]);
    want.insert(want.end(), d.begin(), d.end());
  }
  std::vector<BFloat16> data(total, BFloat16{0x3f80});
  const auto mine = rank_bf16_bits(101, r, counts[r]);
  for (int64_t i = 0; i < counts[r]; ++i) data[offset + i].bits = mine[i];
  w().all_gather(data.data(), counts);
  expect_bits(data, want, "bf16 all_gather");
}

TEST(Bf16, SendRecvRing) {
  if (w().size() < 2) GTEST_SKIP() << "needs two ranks";
  const int size = w().size(), r = w().rank();
  const int next = (r + 1) % size, prev = (r + size - 1) % size;
  const int64_t n = 131;
  const auto out = from_bits(rank_bf16_bits(111, r, n));
  std::vector<BFloat16> in(n, BFloat16{0x3f80});
  if (r % 2 == 0) {
    w().send(out.data(), n, next, 9);
    w().recv(in.data(), n, prev, 9);
  } else {
    w().recv(in.data(), n, prev, 9);
    w().send(out.data(), n, next, 9);
  }
  expect_bits(in, rank_bf16_bits(111, prev, n), "bf16 ring recv");
  // Non-blocking send the other way round.
  const auto out2 = from_bits(rank_bf16_bits(112, r, n));
  auto req = w().isend(out2.data(), n, prev, 10);
  w().recv(in.data(), n, next, 10);
  req->wait();
  expect_bits(in, rank_bf16_bits(112, next, n), "bf16 isend/recv");
}

TEST(Split, EvenOddGroupsReduceSeparately) {
  const int r = w().rank();
  auto group = w().split(r % 2, r, "parity");
  // Members of my group, in world-rank order.
  std::vector<int> members;
  for (int q = r % 2; q < w().size(); q += 2) members.push_back(q);
  ASSERT_EQ(group->size(), static_cast<int>(members.size()));
  EXPECT_EQ(group->rank(), r / 2);
  EXPECT_EQ(group->name(), "parity");
  EXPECT_EQ(group->world_rank(), r);
  const int64_t n = 301;
  auto data = rank_data<int64_t>(71, r, n);
  group->all_reduce(data.data(), n, ReduceOp::sum);
  std::vector<int64_t> want(n, 0);
  for (int q : members) {
    const auto d = rank_data<int64_t>(71, q, n);
    for (int64_t i = 0; i < n; ++i) want[i] += d[i];
  }
  expect_close(data, want, "all_reduce within parity group");
}

TEST(ProcessGrid, EveryFactorizationOfTheWorld) {
  const int size = w().size(), r = w().rank();
  int combos = 0;
  for (int pp = 1; pp <= size; ++pp)
    for (int tp = 1; tp <= size; ++tp)
      for (int dp = 1; dp <= size; ++dp) {
        if (dp * tp * pp != size) continue;
        ++combos;
        SCOPED_TRACE("dp=" + std::to_string(dp) + " tp=" + std::to_string(tp) +
                     " pp=" + std::to_string(pp));
        config::ParallelConfig p;
        p.dp = dp;
        p.tp = tp;
        p.pp = pp;
        parallel::ProcessGrid g(w(), p);
        // tp fastest, then dp, then pp.
        EXPECT_EQ(g.tp_rank(), r % tp);
        EXPECT_EQ(g.dp_rank(), (r / tp) % dp);
        EXPECT_EQ(g.pp_rank(), r / (tp * dp));
        EXPECT_EQ(g.pp_rank() * dp * tp + g.dp_rank() * tp + g.tp_rank(), r);
        EXPECT_EQ(g.tp_group().size(), tp);
        EXPECT_EQ(g.dp_group().size(), dp);
        EXPECT_EQ(g.pp_group().size(), pp);
        EXPECT_EQ(g.tp_group().rank(), g.tp_rank());
        EXPECT_EQ(g.dp_group().rank(), g.dp_rank());
        EXPECT_EQ(g.pp_group().rank(), g.pp_rank());
        // A tp all_reduce of (1 << world_rank) names exactly the world ranks of my tp
        // group: the consecutive ranks [r - tp_rank, r - tp_rank + tp).
        int64_t bits = int64_t{1} << r;
        g.tp_group().all_reduce(&bits, 1, ReduceOp::sum);
        int64_t want = 0;
        for (int q = r - g.tp_rank(); q < r - g.tp_rank() + tp; ++q) want |= int64_t{1} << q;
        EXPECT_EQ(bits, want);
        // dp group: stride tp; pp group: stride dp*tp.
        int64_t dbits = int64_t{1} << r, pbits = int64_t{1} << r;
        g.dp_group().all_reduce(&dbits, 1, ReduceOp::sum);
        g.pp_group().all_reduce(&pbits, 1, ReduceOp::sum);
        int64_t dwant = 0, pwant = 0;
        for (int d = 0; d < dp; ++d) dwant |= int64_t{1} << (r + (d - g.dp_rank()) * tp);
        for (int s = 0; s < pp; ++s) pwant |= int64_t{1} << (r + (s - g.pp_rank()) * dp * tp);
        EXPECT_EQ(dbits, dwant);
        EXPECT_EQ(pbits, pwant);
        // The tp group's world_rank() still reports the launcher's rank.
        EXPECT_EQ(g.tp_group().world_rank(), r);
      }
  EXPECT_GE(combos, 1);
  // A product other than the world size is a UserError naming the keys (on every rank).
  config::ParallelConfig bad;
  bad.dp = size + 1;
  try {
    parallel::ProcessGrid g(w(), bad);
    ADD_FAILURE() << "expected UserError";
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("parallel.dp x parallel.tp x parallel.pp"),
              std::string::npos)
        << e.what();
  }
}

TEST(Barrier, Completes) {
  w().barrier();
  SUCCEED();
}

// On ranks other than 0: prints only failed assertions, tagged with the rank.
class FailurePrinter : public ::testing::EmptyTestEventListener {
 public:
  explicit FailurePrinter(int rank) : rank_(rank) {}
  void OnTestPartResult(const ::testing::TestPartResult& r) override {
    if (!r.failed()) return;
    std::fprintf(stderr, "[rank %d] %s:%d: failure\n%s\n", rank_,
                 r.file_name() ? r.file_name() : "?", r.line_number(), r.summary());
  }

 private:
  int rank_;
};

}  // namespace
}  // namespace kumiko::comm

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  auto& world = kumiko::comm::world();  // MPI_Init under mpirun
  auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
  if (world.rank() != 0) {
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new kumiko::comm::FailurePrinter(world.rank()));
  }
  const int local = RUN_ALL_TESTS();
  // A failure on any rank fails every rank (and so mpirun's exit code).
  int32_t failed = local != 0 ? 1 : 0;
  world.all_reduce(&failed, 1, kumiko::comm::ReduceOp::sum);
  if (world.rank() == 0 && failed > 0)
    std::fprintf(stderr, "test_comm: %d rank(s) failed (other ranks' failures: [rank N])\n",
                 failed);
  kumiko::comm::finalize_world();
  return failed > 0 ? 1 : 0;
}
