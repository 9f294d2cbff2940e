// NCCL communicator: collectives on device memory against host-computed values.
// One rank per GPU; on a machine without a GPU every test skips with a message.
#include <cuda_runtime.h>

#include <random>
#include <vector>

#include <gtest/gtest.h>

#include "kumiko/comm/nccl.h"
#include "kumiko_test_support.h"

namespace kumiko::comm {
namespace {

bool have_gpu() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

class Nccl : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!have_gpu()) GTEST_SKIP() << "no CUDA device visible: NCCL tests need a GPU";
    comm_ = make_nccl(world(), "nccl-world");
  }
  std::unique_ptr<Communicator> comm_;
};

TEST_F(Nccl, AllReduceReduceScatterAllGather) {
  const int n = comm_->size(), r = comm_->rank();
  const int64_t count = 1000 + 7;
  std::vector<float> host(count);
  std::mt19937 gen(1234 + r);
  std::normal_distribution<float> dist;
  for (auto& x : host) x = dist(gen);
  float* dev = nullptr;
  ASSERT_EQ(cudaMalloc(&dev, count * sizeof(float)), cudaSuccess);
  cudaMemcpy(dev, host.data(), count * sizeof(float), cudaMemcpyHostToDevice);
  comm_->all_reduce(dev, count, ReduceOp::sum);
  std::vector<float> out(count, -1.0f);
  cudaMemcpy(out.data(), dev, count * sizeof(float), cudaMemcpyDeviceToHost);
  // Expected: the sum of every rank's seeded data.
  for (int64_t i = 0; i < count; ++i) {
    double expect = 0;
    for (int q = 0; q < n; ++q) {
      std::mt19937 g(1234 + q);
      std::normal_distribution<float> d;
      float v = 0;
      for (int64_t j = 0; j <= i; ++j) v = d(g);
      expect += v;
    }
    ASSERT_NEAR(out[i], expect, 1e-4) << i;
    if (i > 20) break;  // the first elements suffice for the check's cost
  }
  // Uneven reduce_scatter then all_gather in place restores the all-reduced vector.
  std::vector<int64_t> counts(n, count / n);
  counts[0] += count % n;
  float* recv = nullptr;
  cudaMalloc(&recv, counts[r] * sizeof(float));
  cudaMemcpy(dev, host.data(), count * sizeof(float), cudaMemcpyHostToDevice);
  comm_->reduce_scatter(dev, recv, counts, ReduceOp::sum);
  int64_t offset = 0;
  for (int q = 0; q < r; ++q) offset += counts[q];
  cudaMemcpy(dev + offset, recv, counts[r] * sizeof(float), cudaMemcpyDeviceToDevice);
  comm_->all_gather(dev, counts);
  std::vector<float> gathered(count);
  cudaMemcpy(gathered.data(), dev, count * sizeof(float), cudaMemcpyDeviceToHost);
  for (int64_t i = 0; i < count; ++i) ASSERT_NEAR(gathered[i], out[i], 1e-5) << i;
  cudaFree(recv);
  cudaFree(dev);
}

}  // namespace
}  // namespace kumiko::comm

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  kumiko::comm::world();
  const int failed = RUN_ALL_TESTS();
  const int code = kumiko::testing::mpi_test_exit_code(kumiko::comm::world(), failed != 0);
  kumiko::comm::finalize_world();
  return code;
}
