#pragma once
// Stragglers ([log] straggler_every, straggler_threshold; docs/operations.md): one slow
// node (a throttled CPU, a bad DIMM, a noisy neighbour) slows every rank of a
// synchronous job, and from the step time alone nobody can tell which. Every
// `every` steps each rank's mean compute time per step (its step time minus the time
// it waited in the data-parallel reduction and optimizer collectives) is gathered;
// the slowest rank, its host and the median are reported, and a rank slower than the
// median by more than `threshold` is named in the log.
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "kumiko/comm/communicator.h"

namespace kumiko::train {

struct StragglerReport {
  int slowest_rank = 0;
  std::string slowest_host;
  double slowest_ms = 0, median_ms = 0;  // compute per step
  bool straggling = false;               // slowest_ms > (1 + threshold) x median_ms
};

class Stragglers {
 public:
  // Collective over `world` when every > 0 (the ranks' host names are gathered once).
  Stragglers(comm::Communicator& world, int64_t every, double threshold);

  // After step `step` completed with `compute_s` seconds of compute on this rank. At
  // every `every`-th step (a collective: every rank calls it at the same steps) the
  // report over the steps since the last one.
  std::optional<StragglerReport> after_step(int64_t step, double compute_s);

  // Testing only: the rank named by the environment variable KUMIKO_TEST_SLOW_RANK
  // sleeps KUMIKO_TEST_SLOW_MS milliseconds per step (called inside the step's compute).
  void test_delay() const;

 private:
  comm::Communicator& world_;
  int64_t every_;
  double threshold_;
  std::vector<std::string> hosts_;
  double compute_s_ = 0;
  int64_t steps_ = 0;
  int test_delay_ms_ = 0;
};

}  // namespace kumiko::train
