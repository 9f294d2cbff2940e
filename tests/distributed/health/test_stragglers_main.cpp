// Stragglers (train/stragglers.h): at dp = 2, rank 1 sleeping 40 ms per step
// (KUMIKO_TEST_SLOW_RANK / KUMIKO_TEST_SLOW_MS, read only by this test hook) is
// reported every log.straggler_every steps as the slowest rank, with its compute time
// per step well above the median; without the delay, no report says "straggling".
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "kumiko/comm/communicator.h"
#include "kumiko/train/trainer.h"
#include "kumiko_test_support.h"

namespace kumiko {
namespace {

std::string g_root;

struct Report {
  int slowest_rank;
  double slowest_ms, median_ms;
};

// The straggler fields of every step record in metrics.jsonl (written by rank 0).
std::vector<Report> reports(const std::string& run_dir) {
  std::vector<Report> out;
  std::ifstream in(run_dir + "/metrics.jsonl");
  auto number = [](const std::string& line, const std::string& key) {
    const auto at = line.find("\"" + key + "\":");
    return at == std::string::npos ? -1.0 : std::stod(line.substr(at + key.size() + 3));
  };
  for (std::string line; std::getline(in, line);)
    if (line.find("\"slowest_rank\"") != std::string::npos)
      out.push_back({static_cast<int>(number(line, "slowest_rank")), number(line, "slowest_ms"),
                     number(line, "median_ms")});
  return out;
}

config::Config tiny(const std::string& run_dir) {
  auto c = testing::tiny_config("gpt2", run_dir);
  c.train.steps = 8;
  c.train.micro_batch = 2;
  c.parallel.dp = 2;
  c.backend.threads = 1;
  c.log.straggler_every = 4;
  c.log.level = "error";
  return c;
}

TEST(Stragglers, SlowRankIsNamed) {
  auto& world = comm::world();
  ASSERT_EQ(world.size(), 2);
  setenv("KUMIKO_TEST_SLOW_RANK", "1", 1);
  setenv("KUMIKO_TEST_SLOW_MS", "40", 1);
  const auto c = tiny(g_root + "/slow");
  train::Trainer(c, world).run();
  unsetenv("KUMIKO_TEST_SLOW_RANK");
  unsetenv("KUMIKO_TEST_SLOW_MS");
  if (world.rank() != 0) return;
  const auto r = reports(c.log.run_dir);
  ASSERT_EQ(r.size(), 2u) << "a report at steps 4 and 8";
  for (const auto& x : r) {
    EXPECT_EQ(x.slowest_rank, 1);
    EXPECT_GE(x.slowest_ms, 40.0);
    EXPECT_GT(x.slowest_ms, 1.2 * x.median_ms);
  }
}

TEST(Stragglers, ReportsWithoutADelayHaveBothRanksClose) {
  auto& world = comm::world();
  const auto c = tiny(g_root + "/even");
  train::Trainer(c, world).run();
  if (world.rank() != 0) return;
  const auto r = reports(c.log.run_dir);
  ASSERT_EQ(r.size(), 2u);
  for (const auto& x : r) EXPECT_LT(x.slowest_ms, 40.0) << "no rank sleeps here";
}

}  // namespace
}  // namespace kumiko

int main(int argc, char** argv) {
  return kumiko::testing::mpi_test_main(argc, argv, "kumiko-stragglers", kumiko::g_root);
}
