// Training loop: LR schedule, determinism (same seed -> bitwise identical losses),
// thread-count independence, gradient accumulation, and the weights file.
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <unistd.h>

#include <gtest/gtest.h>

#include "kumiko/core/error.h"
#include "kumiko/core/log.h"
#include "kumiko/gpu/engine.h"
#include "kumiko_test_support.h"
#include "kumiko/model/transformer.h"
#include "kumiko/train/schedule.h"
#include "kumiko/train/trainer.h"
#include "kumiko/train/weights.h"

namespace kumiko::train {
namespace {

namespace fs = std::filesystem;

// 6 steps of one micro-batch of 4 sequences.
config::Config tiny_config(const std::string& arch, const std::string& run_dir) {
  auto c = testing::tiny_config(arch, run_dir);
  c.train.steps = 6;
  c.train.micro_batch = 4;
  c.train.warmup_steps = 2;
  return c;
}

std::string temp_dir(const std::string& name) { return testing::temp_run_dir(name); }

std::vector<double> run(const config::Config& c) {
  log::init({0, 1, "warn", false});
  auto world = comm::make_local();
  Trainer t(c, *world);
  return t.run().losses;
}

TEST(Schedule, WarmupThenCosineToFloor) {
  config::TrainConfig t;
  t.steps = 100;
  t.warmup_steps = 10;
  t.lr = 1.0;
  t.min_lr = 0.1;
  EXPECT_DOUBLE_EQ(learning_rate(t, 0), 0.1);
  EXPECT_DOUBLE_EQ(learning_rate(t, 9), 1.0);
  EXPECT_DOUBLE_EQ(learning_rate(t, 10), 1.0);
  EXPECT_NEAR(learning_rate(t, 55), 0.55, 1e-12);
  EXPECT_NEAR(learning_rate(t, 100), 0.1, 1e-12);
  t.decay = "linear";
  EXPECT_NEAR(learning_rate(t, 55), 0.55, 1e-12);
  EXPECT_NEAR(learning_rate(t, 32), 1.0 - 0.9 * 22.0 / 90.0, 1e-12);
  t.decay = "constant";
  EXPECT_DOUBLE_EQ(learning_rate(t, 80), 1.0);
}

class TrainerArch : public ::testing::TestWithParam<std::string> {};

// (Random tokens cannot be learned: that training lowers the loss is checked on the
// corpus by tests/integration/convergence.)
TEST_P(TrainerArch, SameSeedIsBitwiseIdentical) {
  const auto a = run(tiny_config(GetParam(), temp_dir("a")));
  const auto b = run(tiny_config(GetParam(), temp_dir("b")));
  ASSERT_EQ(a.size(), 6u);
  for (size_t i = 0; i < a.size(); ++i) EXPECT_EQ(a[i], b[i]) << "step " << i;
  EXPECT_NEAR(a[0], std::log(97.0), 0.1);  // small init: uniform prediction
  // A different seed gives different losses (the comparison above is not vacuous).
  auto other = tiny_config(GetParam(), temp_dir("c"));
  other.train.seed = 99;
  EXPECT_NE(run(other)[0], a[0]);
}

TEST_P(TrainerArch, ThreadCountChangesLossesOnlyByRounding) {
  auto c1 = tiny_config(GetParam(), temp_dir("t1"));
  c1.backend.threads = 1;
  auto c2 = tiny_config(GetParam(), temp_dir("t2"));
  c2.backend.threads = 2;
  const auto a = run(c1), b = run(c2);
  for (size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(a[i], b[i], 1e-6 * std::abs(a[i])) << "step " << i;
}

TEST_P(TrainerArch, GradientAccumulationMatchesOneMicroBatch) {
  auto c1 = tiny_config(GetParam(), temp_dir("m4"));
  auto c2 = tiny_config(GetParam(), temp_dir("m1"));
  c2.train.micro_batch = 1;  // 4 accumulation steps, same global batch
  const auto a = run(c1), b = run(c2);
  for (size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(a[i], b[i], 1e-5 * std::abs(a[i])) << "step " << i;
}

TEST_P(TrainerArch, WeightsFileRoundTrip) {
  const auto dir = temp_dir("w");
  auto c = tiny_config(GetParam(), dir);
  c.log.save_init_weights = true;
  run(c);
  const auto dims = model::Dims::from(c.model);
  model::Transformer<float> m(dims, 1, 16);
  const WeightsInfo info = read_weights(dir + "/weights_final.h5", m.params());
  EXPECT_EQ(info.step, 6);
  EXPECT_NE(info.config_ini.find("[model]"), std::string::npos);
  // Differs from the initial weights, which also load.
  model::Transformer<float> m0(dims, 1, 16);
  read_weights(dir + "/weights_init.h5", m0.params());
  model::Transformer<float> fresh(dims, 1, 16);
  fresh.params().initialize(c.train.seed);
  const auto& a = m0.params().flat_values();
  EXPECT_EQ(0, std::memcmp(a.data(), fresh.params().flat_values().data(), a.bytes()));
  EXPECT_NE(0, std::memcmp(a.data(), m.params().flat_values().data(), a.bytes()));
}

// MFU is undefined without a peak: metrics.jsonl says null, not 0 (a plotted 0 would
// read as an idle machine); with a peak it is a number.
TEST(Metrics, MfuIsNullWithoutAPeak) {
  auto mfu_fields = [](const config::Config& c) {
    run(c);
    std::ifstream in(c.log.run_dir + "/metrics.jsonl");
    std::vector<std::string> fields;
    for (std::string line; std::getline(in, line);) {
      const auto at = line.find("\"mfu\":");
      if (at != std::string::npos) fields.push_back(line.substr(at + 6, line.find(',', at) - at - 6));
    }
    return fields;
  };
  // An empty rate cache: a `kumiko bench gemm` run on this machine saves a CPU peak in
  // ~/.cache/kumiko, which would give MFU a peak.
  const std::string cache = temp_dir("mfu-cache");
  setenv("KUMIKO_CACHE_DIR", cache.c_str(), 1);
  auto c = tiny_config("gpt2", temp_dir("mfu-none"));
  c.train.steps = 2;
  c.backend.peak_gflops = 0;
  const auto without = mfu_fields(c);
  ASSERT_EQ(without.size(), 2u);
  for (const auto& f : without) EXPECT_EQ(f, "null");
  c.log.run_dir = temp_dir("mfu-peak");
  c.backend.peak_gflops = 100;
  const auto with_peak = mfu_fields(c);
  ASSERT_EQ(with_peak.size(), 2u);
  for (const auto& f : with_peak) EXPECT_GT(std::stod(f), 0.0) << f;
  unsetenv("KUMIKO_CACHE_DIR");
}

TEST(Weights, InitialWeightsOnlyWhenAsked) {
  const auto dir = temp_dir("no-init");
  auto c = tiny_config("gpt2", dir);
  c.train.steps = 2;
  run(c);
  EXPECT_FALSE(std::filesystem::exists(dir + "/weights_init.h5"));
  EXPECT_TRUE(std::filesystem::exists(dir + "/weights_final.h5"));
}

TEST(Weights, WrongModelIsRefusedNamingTheTensor) {
  const auto dir = temp_dir("wrong");
  auto c = tiny_config("gpt2", dir);
  c.train.steps = 1;
  run(c);
  auto other = c.model;
  other.d_model = 64;
  model::Transformer<float> m(model::Dims::from(other), 1, 16);
  try {
    read_weights(dir + "/weights_final.h5", m.params());
    FAIL() << "expected an error";
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("embed.tokens.weight"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("weights_final.h5"), std::string::npos) << e.what();
  }
}

// A non-finite gradient never updates the weights: the step is skipped (and
// counted); train.max_skipped_steps in a row end the run.
TEST(NonFinite, PoisonedStepIsSkippedAndWeightsUnchanged) {
  auto skipped = tiny_config("gpt2", temp_dir("nan3"));
  skipped.train.steps = 3;
  skipped.train.warmup_steps = 0;
  skipped.train.decay = "constant";
  skipped.train.inject_nan_step = 3;
  auto two = skipped;
  two.log.run_dir = temp_dir("nan2");
  two.train.steps = 2;
  two.train.inject_nan_step = 0;
  log::init({0, 1, "error", false});
  auto world = comm::make_local();
  const auto a = Trainer(skipped, *world).run();
  const auto b = Trainer(two, *world).run();
  EXPECT_EQ(a.skipped, std::vector<int64_t>{3});
  EXPECT_FALSE(a.diverged);
  ASSERT_EQ(a.losses.size(), 2u);
  EXPECT_EQ(a.losses, b.losses);
  const auto dims = model::Dims::from(skipped.model);
  model::Transformer<float> ma(dims, 1, 16), mb(dims, 1, 16);
  read_weights(skipped.log.run_dir + "/weights_final.h5", ma.params());
  read_weights(two.log.run_dir + "/weights_final.h5", mb.params());
  const auto& fa = ma.params().flat_values();
  EXPECT_EQ(0, std::memcmp(fa.data(), mb.params().flat_values().data(), fa.bytes()));
}

TEST(NonFinite, TooManyInARowEndTheRun) {
  auto c = tiny_config("llama", temp_dir("nanmax"));
  c.train.steps = 10;
  c.train.inject_nan_step = 2;
  c.train.inject_nan_count = 5;
  c.train.max_skipped_steps = 3;
  log::init({0, 1, "error", false});
  auto world = comm::make_local();
  const auto r = Trainer(c, *world).run();
  EXPECT_TRUE(r.diverged);
  EXPECT_EQ(r.skipped, (std::vector<int64_t>{2, 3, 4}));
  EXPECT_EQ(r.steps_taken, 4);
}

// backend.device = cuda without a usable GPU (or without the CUDA backend compiled
// in) is the user's mistake: one line saying which, before any step. GPU runs are
// tested in tests/gpu.
TEST(CudaBackend, WithoutAGpuIsAClearError) {
  if (gpu::visible_devices() > 0) GTEST_SKIP() << "a GPU is visible: tests/gpu covers this machine";
  auto c = tiny_config("gpt2", temp_dir("cuda-nogpu"));
  c.backend.device = "cuda";
  log::init({0, 1, "off", false});
  auto world = comm::make_local();
  try {
    Trainer(c, *world).run();
    FAIL() << "expected a UserError";
  } catch (const UserError& e) {
    const std::string msg = e.what();
    EXPECT_EQ(msg.rfind("backend.device = cuda: ", 0), 0u) << msg;
    EXPECT_NE(msg.find(gpu::cuda_built() ? "no CUDA device is visible" : "built without the CUDA backend"),
              std::string::npos)
        << msg;
  }
}

TEST(CudaBackend, RefusesNoLayoutTheCpuRuns) {
  // The CUDA backend runs every dp x tp x pp x zero layout (tests/distributed/gpu_layouts):
  // a pipeline layout on one rank fails on the world size, as on the CPU, not on the backend.
  auto c = tiny_config("gpt2", temp_dir("cuda-pp"));
  c.backend.device = "cuda";
  c.parallel.pp = 2;
  log::init({0, 1, "off", false});
  auto world = comm::make_local();
  std::string cpu_error, cuda_error;
  try {
    Trainer(c, *world).run();
  } catch (const UserError& e) {
    cuda_error = e.what();
  }
  c.backend.device = "cpu";
  try {
    Trainer(c, *world).run();
  } catch (const UserError& e) {
    cpu_error = e.what();
  }
  EXPECT_FALSE(cpu_error.empty());
  EXPECT_EQ(cuda_error, cpu_error);
}

INSTANTIATE_TEST_SUITE_P(Arch, TrainerArch, ::testing::Values("gpt2", "llama"));

}  // namespace
}  // namespace kumiko::train
