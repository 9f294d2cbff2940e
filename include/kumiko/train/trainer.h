#pragma once
// The training loop: data -> model forward/backward over micro-batches ->
// gradient clipping -> AdamW, with the LR schedule, evaluation, per-step log
// lines and run_dir/metrics.jsonl.
#include <cstdint>
#include <memory>
#include <vector>

#include "kumiko/config/config.h"

namespace kumiko::train {

struct RunSummary {
  std::vector<double> losses;  // training loss of every step taken
  double last_val_loss = -1;   // -1 when no evaluation ran
  int64_t steps_taken = 0;
};

class Trainer {
 public:
  explicit Trainer(config::Config config);
  ~Trainer();
  RunSummary run();

 private:
  struct State;
  config::Config config_;
  std::unique_ptr<State> state_;
};

// Threads for kumiko's kernels and OpenBLAS (one OpenMP pool); 0 = all cores.
void set_threads(int threads);

}  // namespace kumiko::train
