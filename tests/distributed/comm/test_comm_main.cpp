// Collectives of the MPI communicator against values computed locally, at any
// rank count (registered for 1, 2, 3 and 4 ranks). Every rank generates every
// rank's data from the same seeds, so the expected result of a collective is a
// local computation. Only rank 0 prints; a failure on any rank fails every rank.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
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
