#pragma once
// Shared by kumiko's tests: a tiny model configuration on synthetic data, temporary
// run folders, and the main() of tests that run under mpirun.
#include <unistd.h>

#include <filesystem>
#include <functional>
#include <string>

#include <gtest/gtest.h>

#include "kumiko/comm/communicator.h"
#include "kumiko/config/config.h"
#include "kumiko/core/log.h"
#include "kumiko/model/transformer.h"

namespace kumiko::testing {

// An empty folder /tmp/kumiko-test-<name>-<pid>.
inline std::string temp_run_dir(const std::string& name) {
  const auto p = std::filesystem::temp_directory_path() /
                 ("kumiko-test-" + name + "-" + std::to_string(::getpid()));
  std::filesystem::remove_all(p);
  return p.string();
}

// Model dimensions for tests that drive the model directly: 4 heads of 8 (llama: 2
// kv heads), width 32, vocabulary 61, up to 24 positions, init std 0.2 (attention far
// from uniform); gpt2 tied, llama untied.
inline model::Dims small_dims(bool llama, int64_t layers = 2) {
  model::Dims d;
  d.llama = llama;
  d.L = layers;
  d.Hq = 4;
  d.Hkv = llama ? 2 : 4;
  d.D = 8;
  d.C = 32;
  d.F = llama ? 48 : 128;
  d.V = 61;
  d.max_T = 24;
  d.tied = !llama;
  d.init_std = 0.2;
  return d;
}

// 2 layers, 4 heads (2 kv heads for llama), width 32, vocabulary 97, 16-token
// sequences of random tokens; 20 steps of 4 sequences in micro-batches of 2. Tests
// change what they need.
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

// The exit code of a GoogleTest binary run under mpirun, given whether any rank
// failed: 1 on a failure, 77 when every case skipped (ctest's SKIP_RETURN_CODE: the
// run is reported as skipped, e.g. GPU tests on a CPU machine), 0 otherwise.
inline int mpi_test_exit_code(comm::Communicator& world, bool any_rank_failed) {
  const auto& unit = *::testing::UnitTest::GetInstance();
  // Skipped only when every case skipped on every rank (collective).
  int32_t ran = !(unit.successful_test_count() == 0 && unit.skipped_test_count() > 0);
  world.all_reduce(&ran, 1, comm::ReduceOp::max);
  if (any_rank_failed) return 1;
  return ran ? 0 : 77;
}

// main() of a GoogleTest binary run under mpirun: one shared scratch folder (`root`,
// named after rank 0's pid), `setup` on every rank once it is known (then a barrier),
// gtest's output from rank 0 only, and a failure on any rank fails the test on every
// rank.
inline int mpi_test_main(int argc, char** argv, const std::string& prefix, std::string& root,
                         const std::function<void()>& setup = {}) {
  ::testing::InitGoogleTest(&argc, argv);
  auto& world = comm::world();
  log::init({world.rank(), world.size(), "error", false});
  int64_t pid = ::getpid();
  world.broadcast(&pid, 1, 0);
  root = (std::filesystem::temp_directory_path() / (prefix + "-" + std::to_string(pid))).string();
  if (setup) setup();
  world.barrier();
  if (world.rank() != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
  }
  int failed = RUN_ALL_TESTS() != 0;
  world.all_reduce(&failed, 1, comm::ReduceOp::max);
  world.barrier();
  if (world.rank() == 0) std::filesystem::remove_all(root);
  const int code = mpi_test_exit_code(world, failed != 0);
  comm::finalize_world();
  return code;
}

}  // namespace kumiko::testing
