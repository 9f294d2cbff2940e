// One dataset of which each of two ranks writes more than 2 GiB (the limit of a 32-bit
// byte count in one MPI-IO call) through the parallel writer, read back slab by slab
// through the checksum filter. Needs about 2.2 GB of memory per rank and 4.3 GB of disk
// in the temporary folder; skips without parallel HDF5 or without that much disk.
#include <filesystem>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "kumiko/ckpt/h5file.h"
#include "kumiko/comm/communicator.h"
#include "kumiko_test_support.h"

namespace kumiko {
namespace {

std::string g_root;

// Element i of the test tensor: not zero, not periodic within a chunk.
float value_at(int64_t i) { return static_cast<float>((i * 2654435761u) % 1000003u) * 1e-3f + 0.5f; }

TEST(LargeCheckpoint, MoreThanTwoGiBPerRankInOneDataset) {
  auto& world = comm::world();
  if (!ckpt::H5Writer::parallel_available()) GTEST_SKIP() << "SKIP: this build has serial HDF5";
  ASSERT_EQ(world.size(), 2) << "run under mpirun -np 2";
  const int64_t cols = 4096;
  const int64_t rows_per_rank = ((int64_t{1} << 29) + (int64_t{1} << 20)) / cols;  // 2.15 GB of floats
  const Shape shape{2 * rows_per_rank, cols};
  int32_t space_ok = 1;
  if (world.rank() == 0) {
    std::filesystem::create_directories(g_root);
    space_ok = std::filesystem::space(g_root).available > (int64_t{5} << 30);
  }
  world.broadcast(&space_ok, 1, 0);
  if (!space_ok) GTEST_SKIP() << "SKIP: less than 5 GiB free in " << g_root;

  const int64_t first_row = world.rank() * rows_per_rank;
  const std::string path = g_root + "/large.h5";
  {
    std::vector<float> mine(static_cast<size_t>(rows_per_rank * cols));
    for (size_t k = 0; k < mine.size(); ++k) mine[k] = value_at(first_row * cols + static_cast<int64_t>(k));
    ASSERT_GT(mine.size() * sizeof(float), size_t{1} << 31);
    ckpt::H5Writer w(path, world);
    w.write_f32_slabs("/model/big", shape, {ckpt::Slab{{first_row, 0}, {rows_per_rank, cols}}}, mine.data());
    w.commit();
  }
  // Read back this rank's rows in 64 MiB slabs (each through its chunks' checksums).
  ckpt::H5Reader r(path);
  const int64_t step = 4096;
  std::vector<float> back(static_cast<size_t>(step * cols));
  int64_t bad = 0;
  for (int64_t row = first_row; row < first_row + rows_per_rank; row += step) {
    const int64_t n = std::min(step, first_row + rows_per_rank - row);
    r.read_f32_slabs("/model/big", shape, {ckpt::Slab{{row, 0}, {n, cols}}}, back.data());
    for (int64_t k = 0; k < n * cols; ++k) bad += back[static_cast<size_t>(k)] != value_at(row * cols + k);
  }
  EXPECT_EQ(bad, 0);
}

}  // namespace
}  // namespace kumiko

int main(int argc, char** argv) {
  return kumiko::testing::mpi_test_main(argc, argv, "kumiko-ckpt-large", kumiko::g_root);
}
