// kumiko train's pre-flight check: a layout whose plan does not fit this machine's
// memory stops before any allocation with one UserError naming the largest term
// and, where one change fits, the cheapest such change (docs/plan.md). The sizes
// are absurd on purpose (terabytes), so the check fails on any machine.
#include <string>

#include <gtest/gtest.h>

#include "kumiko/comm/communicator.h"
#include "kumiko/core/error.h"
#include "kumiko/train/trainer.h"
#include "kumiko_test_support.h"

namespace kumiko::train {
namespace {

std::string preflight_error(const config::Config& c) {
  auto world = comm::make_local();
  try {
    Trainer(c, *world).run();
  } catch (const UserError& e) {
    return e.what();
  }
  return "";
}

TEST(Preflight, TooManyParametersNamesTheOptimizerState) {
  auto c = testing::tiny_config("gpt2", testing::temp_run_dir("preflight-params"));
  c.model.n_layers = 96;
  c.model.d_model = 16384;  // 310B parameters: 5 TB of fp32 weights, gradients and moments
  c.model.n_heads = 128;
  c.model.d_ff = 0;
  const std::string msg = preflight_error(c);
  EXPECT_NE(msg.find("this layout needs"), std::string::npos) << msg;
  EXPECT_NE(msg.find("largest term: optimizer state"), std::string::npos) << msg;
  EXPECT_NE(msg.find("use more ranks"), std::string::npos) << msg;
  EXPECT_EQ(msg.find('\n'), std::string::npos) << "one line: " << msg;
}

TEST(Preflight, HugeMicroBatchSuggestsASmallerOne) {
  auto c = testing::tiny_config("gpt2", testing::temp_run_dir("preflight-acts"));
  c.model.vocab_size = 50000;
  c.train.micro_batch = 1 << 20;  // 16M tokens: 3 TB of logits
  c.train.global_batch = 1 << 20;
  const std::string msg = preflight_error(c);
  EXPECT_NE(msg.find("largest term: activations"), std::string::npos) << msg;
  EXPECT_NE(msg.find("the cheapest change that fits: train.micro_batch = "), std::string::npos) << msg;
}

}  // namespace
}  // namespace kumiko::train
