// validate(): ranges, allowed values and cross-field rules, with exact messages; the file
// is named only when the value at fault came from it.
#include <gtest/gtest.h>

#include <functional>

#include "config_test_util.h"

namespace kumiko::config {
namespace {

using testing::parse;
using testing::TempIni;
using testing::validation_error;

TEST(ConfigValidate, DefaultsAreValid) { EXPECT_EQ(validation_error(Config{}), ""); }

struct Case {
  std::function<void(Config&)> edit;
  std::string message;
};

TEST(ConfigValidate, EachRuleFailsWithItsMessage) {
  const std::vector<Case> cases = {
      {[](Config& c) { c.model.arch = "bert"; },
       "model.arch: expected one of gpt2|llama, got 'bert'"},
      {[](Config& c) { c.model.n_layers = 0; },
       "model.n_layers: expected a positive integer, got 0"},
      {[](Config& c) { c.model.n_heads = 5; },
       "model.d_model: expected a multiple of model.n_heads (5), got 128"},
      {[](Config& c) { c.model.arch = "llama", c.model.n_kv_heads = 3; },
       "model.n_kv_heads: expected 0 or a divisor of model.n_heads (4), got 3"},
      {[](Config& c) { c.model.n_kv_heads = 2; },
       "model.n_kv_heads: expected 0 or model.n_heads (4) for arch gpt2 (no grouped-query "
       "attention), got 2"},
      {[](Config& c) { c.model.arch = "llama", c.model.d_model = 132; },
       "model.d_model: expected an even head dim d_model / n_heads for llama's RoPE, got 132 / 4 = "
       "33"},
      {[](Config& c) { c.model.norm_eps = -1e-5; },
       "model.norm_eps: expected a positive number, got -1e-05"},
      {[](Config& c) { c.data.seq_len = 512; },
       "data.seq_len: expected at most model.max_seq_len (256), got 512"},
      {[](Config& c) { c.data.dir = ""; },
       "data.dir: expected a token-shard folder (or data.synthetic = true), got ''"},
      {[](Config& c) { c.train.global_batch = 12, c.parallel.dp = 2, c.train.micro_batch = 4; },
       "train.global_batch: expected a multiple of train.micro_batch x parallel.dp (4 x 2 = 8), "
       "got "
       "12"},
      {[](Config& c) { c.train.min_lr = 0.01; },
       "train.min_lr: expected at most train.lr (0.001), got 0.01"},
      {[](Config& c) { c.train.beta1 = 1.0; }, "train.beta1: expected a value in [0, 1), got 1"},
      {[](Config& c) { c.train.beta2 = -0.5; },
       "train.beta2: expected a value in [0, 1), got -0.5"},
      {[](Config& c) { c.train.decay = "step"; },
       "train.decay: expected one of cosine|linear|constant, got 'step'"},
      {[](Config& c) { c.train.warmup_steps = 2000; },
       "train.warmup_steps: expected at most train.steps (1000), got 2000"},
      {[](Config& c) { c.train.stop_at = 1001; },
       "train.stop_at: expected 0 (run to train.steps) or a step in [1, 1000], got 1001"},
      {[](Config& c) { c.train.lr = 0; }, "train.lr: expected a positive number, got 0"},
      {[](Config& c) { c.parallel.tp = 3; },
       "parallel.tp: expected a divisor of model.n_heads (4), got 3"},
      {[](Config& c) { c.model.arch = "llama", c.model.n_kv_heads = 1, c.parallel.tp = 2; },
       "parallel.tp: expected a divisor of the kv heads (1), got 2"},
      {[](Config& c) { c.parallel.pp = 5; },
       "parallel.pp: expected at most model.n_layers (4), got 5"},
      {[](Config& c) { c.parallel.zero = 2; }, "parallel.zero: expected one of 0|1, got 2"},
      {[](Config& c) { c.backend.device = "tpu"; },
       "backend.device: expected one of cpu|cuda, got 'tpu'"},
      {[](Config& c) { c.backend.dtype = "fp16"; },
       "backend.dtype: expected one of fp32|bf16, got 'fp16'"},
      {[](Config& c) { c.backend.matmul = "cublas"; },
       "backend.matmul: expected kumiko when backend.device is cpu, got 'cublas'"},
      {[](Config& c) { c.backend.device = "cuda", c.backend.attention = "cudnn"; },
       "backend.attention: expected kumiko when backend.dtype is fp32 (cuDNN's fused attention is bf16 only), got "
       "'cudnn'"},
      {[](Config& c) { c.backend.device = "cuda", c.backend.comm = "shm"; },
       "backend.comm: expected one of auto|nccl|mpi, got 'shm'"},
      {[](Config& c) { c.backend.device = "cuda", c.model.d_model = 100; },
       "model.d_model: expected d_model / n_heads a multiple of 8 and at most 128 on backend.device = cuda (head "
       "dim), got 100 / 4"},
      {[](Config& c) { c.checkpoint.keep_last = -1; },
       "checkpoint.keep_last: expected a value >= 0, got -1"},
      {[](Config& c) { c.log.level = "verbose"; },
       "log.level: expected one of trace|debug|info|warn|error|off, got 'verbose'"},
      {[](Config& c) { c.log.every_steps = 0; },
       "log.every_steps: expected a positive integer, got 0"},
  };
  for (const Case& test : cases) {
    Config c;
    test.edit(c);
    EXPECT_EQ(validation_error(c), test.message);
  }
}

TEST(ConfigValidate, ValidLayoutsPass) {
  Config c;
  c.model.arch = "llama";
  c.model.n_kv_heads = 2;
  c.parallel.dp = 2;
  c.parallel.tp = 2;
  c.parallel.pp = 4;
  c.parallel.zero = 1;
  c.train.global_batch = 32;
  c.train.micro_batch = 4;
  EXPECT_EQ(validation_error(c), "");
  c.backend.dtype = "bf16";  // bf16 mixed precision on the cpu too
  EXPECT_EQ(validation_error(c), "");
  c.backend.dtype = "fp32";
  c.backend.device = "cuda";  // the cuda backend runs every layout the cpu one does
  c.model.d_model = 256;      // head dim 64
  EXPECT_EQ(validation_error(c), "");
  c.parallel.dp = 16;
  c.train.global_batch = 64;
  c.backend.dtype = "bf16";
  c.backend.matmul = "cublas";
  c.backend.attention = "cudnn";
  EXPECT_EQ(validation_error(c), "");
}

TEST(ConfigValidate, NamesTheFileOnlyForValuesFromIt) {
  TempIni ini("[model]\nd_model = 130\n[parallel]\npp = 2\n");
  Config from_file;
  ASSERT_EQ(parse(from_file, {"--config", ini.path()}), "");
  EXPECT_EQ(validation_error(from_file),
            ini.path() + ": model.d_model: expected a multiple of model.n_heads (4), got 130");

  Config from_cli;
  ASSERT_EQ(parse(from_cli, {"--config", ini.path(), "--model.d_model=128", "--parallel.pp=9"}),
            "");
  EXPECT_EQ(validation_error(from_cli), "parallel.pp: expected at most model.n_layers (4), got 9");
}

TEST(ConfigParams, MatchesKnownModels) {
  ModelConfig gpt2;  // GPT-2 small with llm.c's padded vocabulary
  gpt2.n_layers = 12, gpt2.n_heads = 12, gpt2.d_model = 768, gpt2.vocab_size = 50304;
  gpt2.max_seq_len = 1024;
  EXPECT_EQ(estimate_params(gpt2), 124475904);
  ModelConfig llama;  // TinyLlama 1.1B
  llama.arch = "llama", llama.n_layers = 22, llama.n_heads = 32, llama.n_kv_heads = 4;
  llama.d_model = 2048, llama.d_ff = 5632, llama.vocab_size = 32000, llama.max_seq_len = 2048;
  llama.tie_embeddings = false;
  EXPECT_EQ(estimate_params(llama), 1100048384);
}

TEST(ConfigSummary, NamesArchParamsAndTokens) {
  Config c;
  const std::string line = summary(c);
  EXPECT_NE(line.find("gpt2"), std::string::npos) << line;
  EXPECT_NE(line.find("1024 tokens/step"), std::string::npos) << line;
  EXPECT_NE(line.find("M params"), std::string::npos) << line;
}

}  // namespace
}  // namespace kumiko::config
