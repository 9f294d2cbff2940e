#pragma once
// Shared helpers of the checkpoint tests: a tiny synthetic-data configuration and
// temporary run folders.
#include <unistd.h>

#include <filesystem>
#include <string>

#include "kumiko/config/config.h"

namespace kumiko::testing {

inline std::string temp_run_dir(const std::string& name) {
  const auto p = std::filesystem::temp_directory_path() /
                 ("kumiko-ckpt-" + name + "-" + std::to_string(::getpid()));
  std::filesystem::remove_all(p);
  return p.string();
}

inline config::Config tiny_config(const std::string& arch, const std::string& run_dir) {
  config::Config c;
  c.model.arch = arch;
  c.model.n_layers = 2;
  c.model.n_heads = 4;
  c.model.n_kv_heads = arch == "llama" ? 2 : 0;
  c.model.d_model = 32;
  c.model.d_ff = arch == "llama" ? 48 : 128;
  c.model.vocab_size = 97;
  c.model.max_seq_len = 16;
  c.model.tie_embeddings = arch == "gpt2";
  c.data.synthetic = true;
  c.data.seq_len = 16;
  c.train.steps = 20;
  c.train.global_batch = 4;
  c.train.micro_batch = 2;
  c.train.warmup_steps = 3;
  c.train.lr = 1e-2;
  c.train.min_lr = 1e-3;
  c.train.eval_every = 0;
  c.checkpoint.every_steps = 0;
  c.log.run_dir = run_dir;
  c.log.level = "warn";
  return c;
}

}  // namespace kumiko::testing
