// The checkpoint store in-process: bit-exact round trip, bitwise resume, retention,
// corruption detection and fallback, refusal of a different model. Resume and
// corruption run with both writers: `gather` (one process, no MPI) and `parallel` (the
// MPI-IO writer on a one-rank MPI world; skipped in a build without parallel HDF5).
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <tuple>
#include <vector>

#include <gtest/gtest.h>

#include "kumiko_test_support.h"
#include "kumiko/ckpt/h5file.h"
#include "kumiko/ckpt/store.h"
#include "kumiko/core/log.h"
#include "kumiko/model/transformer.h"
#include "kumiko/train/checkpoint.h"
#include "kumiko/train/trainer.h"
#include "kumiko/train/weights.h"

namespace kumiko::train {
namespace {

namespace fs = std::filesystem;
using testing::temp_run_dir;
using testing::tiny_config;

RunSummary run(const config::Config& c) {
  log::init({0, 1, "error", false});
  if (c.checkpoint.writer == "parallel") return Trainer(c, comm::world()).run();
  auto world = comm::make_local();
  return Trainer(c, *world).run();
}

// MPI (initialized by comm::world() for the parallel writer) ends before exit.
class FinalizeMpi : public ::testing::Environment {
 public:
  void TearDown() override { comm::finalize_world(); }
};
const auto* const kFinalizeMpi = ::testing::AddGlobalTestEnvironment(new FinalizeMpi);

// The writers a test runs with: "gather", and "parallel" where the build has it.
std::vector<std::string> writers() {
  std::vector<std::string> w = {"gather"};
  if (ckpt::H5Writer::parallel_available()) w.push_back("parallel");
  return w;
}

std::vector<float> final_weights(const config::Config& c) {
  model::Transformer<float> m(model::Dims::from(c.model), 1, c.data.seq_len);
  read_weights(c.log.run_dir + "/weights_final.h5", m.params());
  const auto& f = m.params().flat_values();
  return std::vector<float>(f.data(), f.data() + f.numel());
}

TEST(Checkpoint, RoundTripIsBitExact) {
  const auto dir = temp_run_dir("rt");
  auto c = tiny_config("llama", dir);
  c.train.steps = 3;
  run(c);  // trained weights and moments, all non-trivial
  const std::string path = dir + "/checkpoints/step_00000003.h5";
  ASSERT_TRUE(fs::exists(path));
  const auto dims = model::Dims::from(c.model);
  model::Transformer<float> m(dims, 1, 16);
  std::vector<float> m1(m.params().total_numel()), v1(m.params().total_numel());
  const TrainState s = load_checkpoint(path, c, "", m.params(), m1.data(), v1.data());
  EXPECT_EQ(s.step, 3);
  EXPECT_EQ(s.optimizer_steps, 3);
  EXPECT_EQ(s.loader_step, 3);
  EXPECT_EQ(s.tokens_seen, 3 * 4 * 16);
  EXPECT_EQ(s.seed, c.train.seed);
  // Save again and compare every tensor and field after a second load.
  const std::string again = dir + "/again.h5";
  save_checkpoint(again, m.params(), m1.data(), v1.data(), s, {config::to_ini(c), "", ""});
  model::Transformer<float> m2(dims, 1, 16);
  std::vector<float> m2m(m2.params().total_numel()), m2v(m2.params().total_numel());
  const TrainState s2 = load_checkpoint(again, c, "", m2.params(), m2m.data(), m2v.data());
  EXPECT_EQ(0, std::memcmp(m.params().flat_values().data(), m2.params().flat_values().data(),
                           m.params().flat_values().bytes()));
  EXPECT_EQ(0, std::memcmp(m1.data(), m2m.data(), m1.size() * sizeof(float)));
  EXPECT_EQ(0, std::memcmp(v1.data(), m2v.data(), v1.size() * sizeof(float)));
  EXPECT_EQ(s2.step, s.step);
  EXPECT_EQ(s2.tokens_seen, s.tokens_seen);
  EXPECT_EQ(s2.optimizer_steps, 3);
  EXPECT_TRUE(ckpt::verify_file(again).empty());
}

// (architecture, backend.dtype): bf16 keeps fp32 master weights and moments in the
// checkpoint and rebuilds its bf16 working copy from them on resume, which must give
// the copy AdamW wrote at that step (round to nearest even of the same fp32 value).
class ResumeArch : public ::testing::TestWithParam<std::tuple<std::string, std::string>> {};

// 20 steps straight vs 10 steps, a checkpoint, a fresh Trainer resuming for 10 more:
// identical losses and final parameters, bit for bit.
TEST_P(ResumeArch, ResumeIsBitwiseIdentical) {
  const auto& [arch, dtype] = GetParam();
  for (const auto& writer : writers()) {
    SCOPED_TRACE("checkpoint.writer = " + writer);
    const auto straight_dir = temp_run_dir("straight-" + arch + "-" + dtype + "-" + writer);
    const auto split_dir = temp_run_dir("split-" + arch + "-" + dtype + "-" + writer);
    auto config = [&](const std::string& dir) {
      auto c = tiny_config(arch, dir);
      c.checkpoint.writer = writer;
      c.backend.dtype = dtype;
      return c;
    };
    const auto straight = run(config(straight_dir));
    auto first = config(split_dir);
    first.train.stop_at = 10;
    const auto a = run(first);
    EXPECT_EQ(a.steps_taken, 10);
    EXPECT_FALSE(fs::exists(split_dir + "/weights_final.h5"));  // stopped early on purpose
    auto second = config(split_dir);
    second.checkpoint.resume = "auto";
    const auto b = run(second);
    EXPECT_EQ(b.first_step, 10);
    ASSERT_EQ(straight.losses.size(), 20u);
    ASSERT_EQ(a.losses.size() + b.losses.size(), 20u);
    for (size_t i = 0; i < 10; ++i) EXPECT_EQ(a.losses[i], straight.losses[i]) << "step " << i + 1;
    for (size_t i = 0; i < 10; ++i) EXPECT_EQ(b.losses[i], straight.losses[10 + i]) << "step " << 11 + i;
    EXPECT_EQ(final_weights(config(straight_dir)), final_weights(second));
    if (dtype == "bf16") {  // the bf16 runs must not have been fp32 runs
      auto fp32 = config(temp_run_dir("fp32-" + arch + "-" + writer));
      fp32.backend.dtype = "fp32";
      fp32.train.stop_at = 2;
      const auto f = run(fp32);
      ASSERT_EQ(f.losses.size(), 2u);
      EXPECT_NE(f.losses[1], straight.losses[1]);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Arch, ResumeArch,
                         ::testing::Combine(::testing::Values("gpt2", "llama"),
                                            ::testing::Values("fp32", "bf16")),
                         [](const auto& p) {
                           return std::get<0>(p.param) + "_" + std::get<1>(p.param);
                         });

TEST(Checkpoint, RetentionKeepsNewestAndLatest) {
  const auto dir = temp_run_dir("keep");
  auto c = tiny_config("gpt2", dir);
  c.train.steps = 10;
  c.checkpoint.every_steps = 2;
  c.checkpoint.keep_last = 2;
  run(c);
  ckpt::Store store(dir + "/checkpoints");
  const auto files = store.list();
  ASSERT_EQ(files.size(), 2u);
  EXPECT_EQ(ckpt::step_of(files[0]), 10);
  EXPECT_EQ(ckpt::step_of(files[1]), 8);
  ASSERT_TRUE(store.latest().has_value());
  EXPECT_EQ(ckpt::step_of(*store.latest()), 10);
  // Retention never removes the checkpoint `latest` names, even when older.
  store.set_latest(files[1]);
  EXPECT_TRUE(store.apply_retention(1).empty());
}

void flip_byte(const std::string& path, std::streamoff offset) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(offset);
  char ch = 0;
  f.read(&ch, 1);
  ch = static_cast<char>(ch ^ 0x5a);
  f.seekp(offset);
  f.write(&ch, 1);
}

class CorruptionWriter : public ::testing::TestWithParam<std::string> {};

TEST_P(CorruptionWriter, CorruptionIsDetectedAndAutoResumeFallsBack) {
  const std::string writer = GetParam();
  if (writer == "parallel" && !ckpt::H5Writer::parallel_available())
    GTEST_SKIP() << "SKIP: this build has serial HDF5";
  const auto dir = temp_run_dir("corrupt-" + writer);
  auto c = tiny_config("gpt2", dir);
  c.checkpoint.writer = writer;
  c.train.steps = 6;
  c.checkpoint.every_steps = 3;
  run(c);
  const std::string newest = dir + "/checkpoints/step_00000006.h5";
  const std::string older = dir + "/checkpoints/step_00000003.h5";
  ASSERT_TRUE(ckpt::verify_file(newest).empty());
  // A flipped byte in the data: the Fletcher-32 checksum catches it, naming the file.
  flip_byte(newest, static_cast<std::streamoff>(fs::file_size(newest) / 2));
  const auto problems = ckpt::verify_file(newest);
  ASSERT_FALSE(problems.empty());
  EXPECT_NE(problems.front().find(newest), std::string::npos) << problems.front();
  // resume=auto skips it and resumes from the one before.
  auto again = c;
  again.train.steps = 6;
  again.checkpoint.resume = "auto";
  const auto r = run(again);
  EXPECT_EQ(r.first_step, 3);
  EXPECT_EQ(r.steps_taken, 6);
  // An explicit path to a corrupt file is an error, never a fresh start.
  const std::string bad = dir + "/bad.h5";
  fs::copy_file(older, bad);
  fs::resize_file(bad, fs::file_size(bad) / 3);  // truncated
  auto explicit_bad = c;
  explicit_bad.log.run_dir = temp_run_dir("corrupt2-" + writer);
  explicit_bad.checkpoint.resume = bad;
  try {
    run(explicit_bad);
    FAIL() << "expected an error";
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("bad.h5"), std::string::npos) << e.what();
  }
  auto missing = c;
  missing.log.run_dir = temp_run_dir("corrupt3-" + writer);
  missing.checkpoint.resume = dir + "/nope.h5";
  EXPECT_THROW(run(missing), UserError);
}

INSTANTIATE_TEST_SUITE_P(Writer, CorruptionWriter, ::testing::Values("gather", "parallel"));

TEST(Checkpoint, MissingDatasetIsNamed) {
  const auto dir = temp_run_dir("missing");
  auto c = tiny_config("gpt2", dir);
  c.train.steps = 1;
  run(c);
  // A file with the model but no optimizer state.
  model::Transformer<float> m(model::Dims::from(c.model), 1, 16);
  const std::string path = dir + "/partial.h5";
  {
    ckpt::H5Writer w(path);
    w.set_attr("format", "kumiko-checkpoint");
    w.set_attr("format_version", int64_t{1});
    w.set_attr("tokenizer_sha256", "");
    w.write_string("/config", config::to_ini(c));
    const auto& p = m.params();
    for (size_t i = 0; i < p.size(); ++i)
      w.write_f32("/model/" + p.spec(static_cast<int>(i)).name, p.spec(static_cast<int>(i)).shape,
                  p.value(static_cast<int>(i)));
    w.commit();
  }
  std::vector<float> mom(m.params().total_numel()), var(m.params().total_numel());
  try {
    load_checkpoint(path, c, "", m.params(), mom.data(), var.data());
    FAIL() << "expected an error";
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("/optim/m/embed.tokens.weight"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("partial.h5"), std::string::npos) << e.what();
  }
}

TEST(Checkpoint, DifferentModelIsRefusedWithKeyByKeyDiff) {
  const auto dir = temp_run_dir("diff");
  auto c = tiny_config("gpt2", dir);
  c.train.steps = 2;
  run(c);
  auto other = tiny_config("gpt2", dir);
  other.model.d_model = 64;
  other.model.n_layers = 3;
  other.checkpoint.resume = "auto";
  try {
    run(other);
    FAIL() << "expected an error";
  } catch (const UserError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("model.d_model: checkpoint 32, config 64"), std::string::npos) << what;
    EXPECT_NE(what.find("model.n_layers: checkpoint 2, config 3"), std::string::npos) << what;
  }
}

// What a resume logs as changed: the run's own settings (precision, layout, schedule),
// not [model] (refused when it differs), [log], [checkpoint] or train.stop_at.
TEST(Checkpoint, RunConfigChangesNameWhatDiffers) {
  auto a = tiny_config("gpt2", temp_run_dir("changes-a"));
  auto b = a;
  b.log.run_dir = temp_run_dir("changes-b");
  b.checkpoint.resume = "auto";
  b.checkpoint.every_steps = a.checkpoint.every_steps + 1;
  b.train.stop_at = 3;
  EXPECT_EQ(run_config_changes(config::to_ini(a), config::to_ini(b)), "");
  b.backend.dtype = "bf16";
  b.parallel.tp = 2;
  b.train.lr = a.train.lr * 2;
  const std::string changed = run_config_changes(config::to_ini(a), config::to_ini(b));
  EXPECT_NE(changed.find("backend.dtype: checkpoint fp32, config bf16"), std::string::npos) << changed;
  EXPECT_NE(changed.find("parallel.tp: checkpoint 1, config 2"), std::string::npos) << changed;
  EXPECT_NE(changed.find("train.lr: checkpoint "), std::string::npos) << changed;
  EXPECT_EQ(changed.find("log."), std::string::npos) << changed;
  EXPECT_EQ(changed.find("checkpoint."), std::string::npos) << changed;
  EXPECT_EQ(changed.find("train.stop_at"), std::string::npos) << changed;
  b.model.d_model = a.model.d_model * 2;
  EXPECT_EQ(run_config_changes(config::to_ini(a), config::to_ini(b)), changed);
}

}  // namespace
}  // namespace kumiko::train
