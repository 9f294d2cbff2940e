// val_loss does not depend on the layout (docs/data-format.md, "val"): the same
// weights evaluated at dp 1 (micro-batch 4), dp 2 x tp 2 (2), pp 2 (1) and dp 4 (2)
// give the same val_loss within 1e-6 relative, equal to the mean token loss of val
// windows 0 .. eval_batches x global_batch - 1 computed directly by one unsplit model.
//
// "The same weights": every run starts from the counter-based initialization (the same
// under any layout) and takes one step at lr = 1e-30, which rounds away in float; the
// run then evaluates those weights. init_std = 0.5 makes the predictions depend on the
// text, so evaluating other windows would show (checked below, not assumed).
#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "kumiko/comm/communicator.h"
#include "kumiko/core/rng.h"
#include "kumiko/core/sha256.h"
#include "kumiko/data/loader.h"
#include "kumiko/data/shard.h"
#include "kumiko/model/transformer.h"
#include "kumiko/train/trainer.h"
#include "kumiko_test_support.h"
#include "layout_compare.h"

namespace kumiko {
namespace {

std::string g_root;
constexpr int kVocab = 96, kSeqLen = 16, kGlobalBatch = 8, kEvalBatches = 3;
constexpr int64_t kValWindows = 30;  // > kEvalBatches * kGlobalBatch: no window repeats

std::vector<int32_t> random_tokens(int64_t n, uint64_t seed) {
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) t[i] = static_cast<int32_t>(rng::philox(seed, 0, i)[0] % kVocab);
  return t;
}

// A prepared folder of random tokens (the loader only hashes tokenizer.model).
std::string make_data(const std::string& dir) {
  std::filesystem::create_directories(dir);
  const std::string model_bytes = "tokenizer stand-in";
  std::ofstream(dir + "/tokenizer.model", std::ios::binary) << model_bytes;
  const Sha256Digest sha = sha256(model_bytes);
  data::ShardWriter train(dir, data::SplitId::train, 1 << 20, kVocab, sha);
  train.append(random_tokens(4000, 1));
  train.finish();
  data::ShardWriter val(dir, data::SplitId::val, 1 << 20, kVocab, sha);
  val.append(random_tokens(kValWindows * kSeqLen + 1, 2));
  val.finish();
  return dir;
}

config::Config tiny(const std::string& arch, const std::string& run_dir) {
  auto c = testing::tiny_config(arch, run_dir);
  c.model.vocab_size = kVocab;
  c.model.init_std = 0.5;
  c.data.synthetic = false;
  c.data.dir = g_root + "/data";
  c.data.seq_len = kSeqLen;
  c.train.steps = 1;
  c.train.global_batch = kGlobalBatch;
  c.train.micro_batch = 4;
  c.train.warmup_steps = 0;
  c.train.lr = 1e-30;
  c.train.min_lr = 0;
  c.train.eval_batches = kEvalBatches;
  c.backend.threads = 1;
  c.log.level = "error";
  return c;
}

// The mean token loss of val windows [0, n) under the initial weights, one batch.
double direct_val_loss(const config::Config& c, int64_t n) {
  const auto dims = model::Dims::from(c.model);
  model::Transformer<float> m(dims, n, kSeqLen);
  m.params().initialize(c.train.seed);
  data::Loader loader(c.data.dir, kSeqLen, c.train.seed);
  std::vector<int32_t> inputs(static_cast<size_t>(n * kSeqLen)), targets(inputs.size());
  loader.fill(data::Split::val, 0, n, 0, n, inputs.data(), targets.data());
  return m.loss(inputs.data(), targets.data(), n, kSeqLen);
}

class EvalLayouts : public ::testing::TestWithParam<std::string> {};

TEST_P(EvalLayouts, ValLossIsTheSameForEveryLayout) {
  const std::string arch = GetParam();
  auto& world = comm::world();
  ASSERT_EQ(world.size(), 4);
  const auto base = tiny(arch, "");
  const double direct = direct_val_loss(base, kEvalBatches * kGlobalBatch);
  // Other windows give another value: the comparisons below can fail.
  ASSERT_GT(std::abs(direct_val_loss(base, kGlobalBatch) - direct), 1e-3 * direct);

  auto layout = [&](const std::string& name, auto&& set) {
    auto c = tiny(arch, g_root + "/" + arch + "-" + name);
    set(c);
    auto group = testing::layout_group(world, c);
    train::Trainer t(c, *group);
    const double val = t.run().last_val_loss;
    EXPECT_NEAR(val, direct, 1e-6 * direct) << arch << " " << name;
  };
  layout("dp1", [](config::Config&) {});
  layout("dp2-tp2", [](config::Config& c) {
    c.parallel.dp = c.parallel.tp = 2;
    c.train.micro_batch = 2;
  });
  layout("pp2", [](config::Config& c) {
    c.parallel.pp = 2;
    c.train.micro_batch = 1;
  });
  layout("dp4", [](config::Config& c) {
    c.parallel.dp = 4;
    c.train.micro_batch = 2;
  });
}

INSTANTIATE_TEST_SUITE_P(Arch, EvalLayouts, ::testing::Values("gpt2", "llama"));

}  // namespace
}  // namespace kumiko

int main(int argc, char** argv) {
  std::string& root = kumiko::g_root;
  // The data folder is written once, by world rank 0, before any test runs.
  return kumiko::testing::mpi_test_main(argc, argv, "kumiko-eval", root, [&] {
    if (kumiko::comm::world().rank() == 0) kumiko::make_data(root + "/data");
  });
}
