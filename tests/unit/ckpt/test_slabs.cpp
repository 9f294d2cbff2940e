// ckpt::slabs_of_runs against element lists: the slabs cover exactly the runs'
// elements, never overlap, and visiting them in HDF5's order (row-major over the
// dataset) gives the runs' elements in their order, which is the order the data of a
// parallel checkpoint write is laid out in. Fixed cases for kumiko's three splits, then
// seeded random runs.
#include <algorithm>
#include <cstdint>
#include <random>
#include <set>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "kumiko/ckpt/h5file.h"

namespace kumiko::ckpt {
namespace {

using Runs = std::vector<std::pair<int64_t, int64_t>>;

// Row-major offsets of every element of the slabs, in HDF5's visiting order.
std::vector<int64_t> elements_of(const Shape& shape, const std::vector<Slab>& slabs) {
  std::vector<int64_t> out;
  const int64_t cols = shape.size() > 1 ? shape[1] : 1;
  for (const auto& s : slabs) {
    const int64_t r0 = shape.size() > 1 ? s.start[0] : 0, rows = shape.size() > 1 ? s.count[0] : 1;
    const int64_t c0 = shape.size() > 1 ? s.start[1] : s.start[0], width = shape.size() > 1 ? s.count[1] : s.count[0];
    for (int64_t r = r0; r < r0 + rows; ++r)
      for (int64_t c = c0; c < c0 + width; ++c) out.push_back(r * cols + c);
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<int64_t> elements_of(const Runs& runs) {
  std::vector<int64_t> out;
  for (const auto& [offset, count] : runs)
    for (int64_t k = 0; k < count; ++k) out.push_back(offset + k);
  return out;
}

void check(const Shape& shape, const Runs& runs, size_t max_slabs) {
  const auto slabs = slabs_of_runs(shape, runs);
  const auto got = elements_of(shape, slabs);
  EXPECT_EQ(got, elements_of(runs)) << "slabs must cover the runs' elements, in the runs' order";
  EXPECT_EQ(std::set<int64_t>(got.begin(), got.end()).size(), got.size()) << "overlapping slabs";
  EXPECT_LE(slabs.size(), max_slabs);
}

TEST(SlabsOfRuns, ColumnSplitIsOneSlab) {
  // Split::cols of a [6, 8] weight, columns [2, 6): one run per row.
  Runs runs;
  for (int64_t r = 0; r < 6; ++r) runs.emplace_back(r * 8 + 2, 4);
  const auto slabs = slabs_of_runs({6, 8}, runs);
  ASSERT_EQ(slabs.size(), 1u);
  EXPECT_EQ(slabs[0].start, (std::vector<int64_t>{0, 2}));
  EXPECT_EQ(slabs[0].count, (std::vector<int64_t>{6, 4}));
}

TEST(SlabsOfRuns, RowRangesAreOneSlabEach) {
  // Split::rows of a fused qkv weight [12, 5]: this rank's q, k and v rows.
  check({12, 5}, {{1 * 5, 2 * 5}, {5 * 5, 2 * 5}, {9 * 5, 2 * 5}}, 3);
  // Adjacent row ranges merge.
  EXPECT_EQ(slabs_of_runs({12, 5}, {{0, 10}, {10, 15}}).size(), 1u);
}

TEST(SlabsOfRuns, OneDimensionalRunsMerge) {
  const auto slabs = slabs_of_runs({100}, {{10, 5}, {15, 5}, {40, 1}});
  ASSERT_EQ(slabs.size(), 2u);
  EXPECT_EQ(slabs[0].count[0], 10);
  check({100}, {{10, 5}, {15, 5}, {40, 1}}, 2);
}

TEST(SlabsOfRuns, PartialRowsAtBothEnds) {
  // From the middle of row 1 to the middle of row 4 of a [6, 7] tensor: a partial first
  // row, two whole rows, a partial last row.
  check({6, 7}, {{1 * 7 + 3, 3 * 7 + 2}}, 3);
  check({6, 7}, {{3, 2}}, 1);  // inside one row
  check({6, 7}, {}, 0);
}

TEST(SlabsOfRuns, RandomRuns) {
  std::mt19937_64 rng(1801);
  for (int trial = 0; trial < 200; ++trial) {
    const int64_t rows = 1 + int64_t(rng() % 9), cols = 1 + int64_t(rng() % 9);
    const Shape shape = trial % 4 == 0 ? Shape{rows * cols} : Shape{rows, cols};
    // Disjoint increasing runs over the row-major elements.
    Runs runs;
    int64_t pos = int64_t(rng() % 3);
    while (pos < rows * cols) {
      const int64_t count = std::min<int64_t>(1 + int64_t(rng() % (2 * cols)), rows * cols - pos);
      runs.emplace_back(pos, count);
      pos += count + int64_t(rng() % 4);
    }
    SCOPED_TRACE(::testing::Message() << "trial " << trial);
    check(shape, runs, 3 * runs.size());
  }
}

}  // namespace
}  // namespace kumiko::ckpt
