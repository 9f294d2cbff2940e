#pragma once
// Loss-spike detection ([train] spike_*; docs/operations.md, "Loss spikes"). Large
// runs see the loss jump by several times in one step (OPT, BLOOM and PaLM describe
// restarting from an earlier checkpoint and skipping data batches). A step is a spike
// when its loss exceeds spike_factor x the median of the last spike_window accepted
// losses (once at least kMinHistory of them exist), or its gradient norm exceeds
// spike_grad_norm. Every rank holds the same history (losses are all-reduced), so
// every rank reaches the same verdict.
#include <cstdint>
#include <deque>
#include <string>
#include <utility>

namespace kumiko::train {

enum class SpikeAction { off, warn, skip, rollback };
SpikeAction parse_spike_action(const std::string& name);  // UserError naming train.spike_action
const char* to_string(SpikeAction action);

class SpikeDetector {
 public:
  static constexpr size_t kMinHistory = 10;

  SpikeDetector(SpikeAction action, double factor, int64_t window, double grad_norm_limit);

  // Why step `step` (loss, gradient norm) is a spike, or "" when it is not (always ""
  // with action off).
  std::string check(double loss, double grad_norm) const;
  // A step whose update was applied joins the history (spikes do not).
  void accept(int64_t step, double loss);
  // After a rollback to `step`: forget the losses of the discarded steps.
  void forget_after(int64_t step);
  double median() const;  // of the history; NaN when empty
  SpikeAction action() const { return action_; }

 private:
  SpikeAction action_;
  double factor_, grad_norm_limit_;
  size_t window_;
  std::deque<std::pair<int64_t, double>> history_;  // (step, loss), oldest first
};

}  // namespace kumiko::train
