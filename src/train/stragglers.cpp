#include "kumiko/train/stragglers.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <thread>

#include "kumiko/comm/hosts.h"

namespace kumiko::train {

Stragglers::Stragglers(comm::Communicator& world, int64_t every, double threshold)
    : world_(world), every_(every), threshold_(threshold) {
  const char* slow_rank = std::getenv("KUMIKO_TEST_SLOW_RANK");
  const char* slow_ms = std::getenv("KUMIKO_TEST_SLOW_MS");
  if (slow_rank && slow_ms && std::atoi(slow_rank) == world.rank()) test_delay_ms_ = std::atoi(slow_ms);
  if (every_ <= 0) return;
  hosts_ = comm::host_names(world);
}

std::optional<StragglerReport> Stragglers::after_step(int64_t step, double compute_s) {
  if (every_ <= 0) return std::nullopt;
  compute_s_ += compute_s;
  ++steps_;
  if (step % every_ != 0) return std::nullopt;
  std::vector<double> ms(static_cast<size_t>(world_.size()), 0.0);
  ms[static_cast<size_t>(world_.rank())] = 1e3 * compute_s_ / static_cast<double>(steps_);
  world_.all_reduce(ms.data(), static_cast<int64_t>(ms.size()), comm::ReduceOp::sum);
  compute_s_ = 0;
  steps_ = 0;
  StragglerReport r;
  r.slowest_rank = static_cast<int>(std::max_element(ms.begin(), ms.end()) - ms.begin());
  r.slowest_host = hosts_[static_cast<size_t>(r.slowest_rank)];
  r.slowest_ms = ms[static_cast<size_t>(r.slowest_rank)];
  std::vector<double> sorted = ms;
  std::sort(sorted.begin(), sorted.end());
  const size_t n = sorted.size();
  r.median_ms = n % 2 == 1 ? sorted[n / 2] : 0.5 * (sorted[n / 2 - 1] + sorted[n / 2]);
  r.straggling = n > 1 && r.slowest_ms > (1 + threshold_) * r.median_ms;
  return r;
}

void Stragglers::test_delay() const {
  if (test_delay_ms_ > 0) std::this_thread::sleep_for(std::chrono::milliseconds(test_delay_ms_));
}

}  // namespace kumiko::train
