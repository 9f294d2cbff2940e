#pragma once
// The training loop: data -> model forward/backward over micro-batches ->
// gradient clipping -> AdamW, with the LR schedule, evaluation, per-step log
// lines and run_dir/metrics.jsonl.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kumiko/comm/communicator.h"
#include "kumiko/config/config.h"

namespace kumiko::train {

// Exit codes of `kumiko train` (docs/operations.md).
inline constexpr int kExitOk = 0;
inline constexpr int kExitInternal = 1;   // a bug or a system failure
inline constexpr int kExitUser = 2;       // bad config, data or checkpoint
inline constexpr int kExitPreempted = 75; // SIGTERM/SIGUSR1: checkpoint saved, resume later
inline constexpr int kExitNonFinite = 76; // train.max_skipped_steps non-finite steps in a row
inline constexpr int kExitCommTimeout = 77; // comm watchdog: parallel.comm_timeout_s exceeded

struct RunSummary {
  std::vector<double> losses;  // training loss of every step taken by this process
  double last_val_loss = -1;   // -1 when no evaluation ran
  int64_t first_step = 0;      // 0, or the step a checkpoint resumed from
  int64_t steps_taken = 0;     // last completed step
  bool preempted = false;      // stopped by a signal after saving a checkpoint
  bool diverged = false;       // stopped after max_skipped_steps non-finite steps in a row
  std::vector<int64_t> skipped;  // steps whose update was skipped (non-finite values or a spike)
  std::string last_checkpoint; // path of the newest checkpoint written, if any
  std::vector<int64_t> spikes;   // steps detected as loss spikes (train.spike_action)
  struct Rollback {
    int64_t spike_step, to_step, skip_from, skip_to;  // loader steps [skip_from, skip_to] never drawn again
  };
  std::vector<Rollback> rollbacks;
};

class Trainer {
 public:
  // `world` holds the ranks of this job (dp x tp x pp of them).
  Trainer(config::Config config, comm::Communicator& world);
  ~Trainer();
  RunSummary run();

 private:
  struct State;
  config::Config config_;
  comm::Communicator& world_;
  std::unique_ptr<State> state_;
};

}  // namespace kumiko::train
