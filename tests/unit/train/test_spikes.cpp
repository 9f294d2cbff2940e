// Loss spikes (train/spike.h, docs/operations.md "Loss spikes"): the detector on its
// own, then each action on a poisoned batch (train.inject_spike_step: that batch's loss
// and gradient x100) in a 16-step run: warn applies the update, skip discards it,
// rollback reloads the last checkpoint and never draws the batches since it again;
// every outcome is reproducible, and a rolled-back run resumes to the same end.
#include <cmath>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "kumiko/core/error.h"
#include "kumiko/core/log.h"
#include "kumiko/model/transformer.h"
#include "kumiko/train/spike.h"
#include "kumiko/train/trainer.h"
#include "kumiko/train/weights.h"
#include "kumiko_test_support.h"

namespace kumiko::train {
namespace {

TEST(SpikeDetector, MedianThresholdAndHistory) {
  SpikeDetector d(SpikeAction::skip, 3.0, 20, 0.0);
  for (int i = 1; i <= 9; ++i) d.accept(i, 2.0 + 0.01 * i);
  EXPECT_EQ(d.check(100.0, 1.0), "") << "fewer than kMinHistory losses: no loss criterion yet";
  d.accept(10, 2.1);
  EXPECT_NEAR(d.median(), 2.055, 1e-12);
  EXPECT_EQ(d.check(6.0, 1.0), "");
  EXPECT_NE(d.check(6.2, 1.0).find("spike_factor"), std::string::npos);
  d.forget_after(5);
  EXPECT_NEAR(d.median(), 2.03, 1e-12);  // steps 1..5 remain
  for (int i = 6; i <= 40; ++i) d.accept(i, 1.0);
  EXPECT_DOUBLE_EQ(d.median(), 1.0);  // only the last 20 count
  SpikeDetector g(SpikeAction::warn, 0.0, 20, 5.0);
  EXPECT_EQ(g.check(1e9, 4.9), "") << "spike_factor = 0 turns the loss criterion off";
  EXPECT_NE(g.check(1.0, 5.1).find("spike_grad_norm"), std::string::npos);
  SpikeDetector off(SpikeAction::off, 3.0, 20, 5.0);
  EXPECT_EQ(off.check(1e9, 1e9), "");
  EXPECT_EQ(parse_spike_action("rollback"), SpikeAction::rollback);
  EXPECT_THROW(parse_spike_action("retry"), UserError);
}

// 16 steps of the tiny gpt2 at a constant learning rate, the batch of step 12 poisoned.
config::Config spike_config(const std::string& name, const std::string& action) {
  auto c = testing::tiny_config("gpt2", testing::temp_run_dir(name));
  c.train.steps = 16;
  c.train.micro_batch = 4;
  c.train.warmup_steps = 0;
  c.train.decay = "constant";
  c.train.spike_action = action;
  c.train.inject_spike_step = 12;
  c.checkpoint.every_steps = 4;
  c.checkpoint.keep_last = 0;
  return c;
}

RunSummary run(const config::Config& c) {
  log::init({0, 1, "off", false});
  auto world = comm::make_local();
  return Trainer(c, *world).run();
}

std::vector<float> final_weights(const config::Config& c) {
  model::Transformer<float> m(model::Dims::from(c.model), 1, 16);
  read_weights(c.log.run_dir + "/weights_final.h5", m.params());
  const auto& f = m.params().flat_values();
  return std::vector<float>(f.data(), f.data() + f.numel());
}

std::string metrics_text(const config::Config& c) {
  std::ifstream in(c.log.run_dir + "/metrics.jsonl");
  return std::string(std::istreambuf_iterator<char>(in), {});
}

TEST(Spike, WarnAppliesTheUpdate) {
  const auto c = spike_config("spike-warn", "warn");
  const auto r = run(c);
  EXPECT_EQ(r.spikes, std::vector<int64_t>{12});
  EXPECT_TRUE(r.skipped.empty());
  ASSERT_EQ(r.losses.size(), 16u);
  EXPECT_GT(r.losses[11], 50 * r.losses[10]);
  EXPECT_NE(metrics_text(c).find("\"step\":12,\"spike\":1,\"spike_action\":\"warn\""), std::string::npos);
}

// Skipping the spike leaves the weights of 11 updates: those of an 11-step run (with
// the same batches).
TEST(Spike, SkipDiscardsTheUpdate) {
  auto c = spike_config("spike-skip", "skip");
  c.train.steps = 12;
  const auto r = run(c);
  EXPECT_EQ(r.spikes, std::vector<int64_t>{12});
  EXPECT_EQ(r.skipped, std::vector<int64_t>{12});
  auto eleven = spike_config("spike-eleven", "skip");
  eleven.train.steps = 11;
  run(eleven);
  EXPECT_EQ(final_weights(c), final_weights(eleven));
  EXPECT_NE(metrics_text(c).find("\"skip_reason\":\"spike\""), std::string::npos);
}

// Rollback at step 12 reloads step 8's checkpoint and skips loader steps 8..11 (the
// batches of steps 9..12): steps 9..16 then train on the batches of steps 13..20.
TEST(Spike, RollbackReloadsAndSkipsTheWindowReproducibly) {
  const auto c = spike_config("spike-rollback", "rollback");
  const auto r = run(c);
  ASSERT_EQ(r.rollbacks.size(), 1u);
  EXPECT_EQ(r.rollbacks[0].spike_step, 12);
  EXPECT_EQ(r.rollbacks[0].to_step, 8);
  EXPECT_EQ(r.rollbacks[0].skip_from, 8);
  EXPECT_EQ(r.rollbacks[0].skip_to, 11);
  EXPECT_EQ(r.steps_taken, 16);
  EXPECT_TRUE(r.skipped.empty());
  EXPECT_NE(metrics_text(c).find("\"spike_action\":\"rollback\""), std::string::npos);
  EXPECT_NE(metrics_text(c).find("\"skip_from\":8,\"skip_to\":11"), std::string::npos);
  // Reproducible: the same run again gives the same bits.
  auto again = c;
  again.log.run_dir = testing::temp_run_dir("spike-rollback-again");
  const auto r2 = run(again);
  EXPECT_EQ(r.losses, r2.losses);
  EXPECT_EQ(final_weights(c), final_weights(again));
  // The skipped window is part of the saved state: resuming from step 12's checkpoint
  // (written after the rollback) ends at the same weights.
  auto resumed = c;
  resumed.log.run_dir = testing::temp_run_dir("spike-rollback-resumed");
  resumed.checkpoint.resume = c.log.run_dir + "/checkpoints/step_00000012.h5";
  const auto r3 = run(resumed);
  EXPECT_EQ(r3.first_step, 12);
  EXPECT_TRUE(r3.rollbacks.empty());
  EXPECT_EQ(final_weights(c), final_weights(resumed));
}

TEST(Spike, RollbackLimitEndsTheRun) {
  auto c = spike_config("spike-limit", "rollback");
  c.train.spike_max_rollbacks = 0;
  const auto r = run(c);
  EXPECT_TRUE(r.diverged);
  EXPECT_EQ(r.steps_taken, 11);
}

}  // namespace
}  // namespace kumiko::train
