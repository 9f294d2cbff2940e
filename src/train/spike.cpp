#include "kumiko/train/spike.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include <spdlog/fmt/fmt.h>

#include "kumiko/core/error.h"

namespace kumiko::train {

SpikeAction parse_spike_action(const std::string& name) {
  if (name == "off") return SpikeAction::off;
  if (name == "warn") return SpikeAction::warn;
  if (name == "skip") return SpikeAction::skip;
  if (name == "rollback") return SpikeAction::rollback;
  KUMIKO_USER_CHECK(false, "train.spike_action: expected off, warn, skip or rollback, got '", name, "'");
  return SpikeAction::off;
}

const char* to_string(SpikeAction action) {
  switch (action) {
    case SpikeAction::off: return "off";
    case SpikeAction::warn: return "warn";
    case SpikeAction::skip: return "skip";
    case SpikeAction::rollback: return "rollback";
  }
  return "?";
}

SpikeDetector::SpikeDetector(SpikeAction action, double factor, int64_t window, double grad_norm_limit)
    : action_(action),
      factor_(factor),
      grad_norm_limit_(grad_norm_limit),
      window_(static_cast<size_t>(std::max<int64_t>(window, 1))) {}

double SpikeDetector::median() const {
  if (history_.empty()) return std::numeric_limits<double>::quiet_NaN();
  std::vector<double> v;
  for (const auto& h : history_) v.push_back(h.second);
  const size_t mid = v.size() / 2;
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(mid), v.end());
  if (v.size() % 2 == 1) return v[mid];
  const double upper = v[mid];
  return 0.5 * (upper + *std::max_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(mid)));
}

std::string SpikeDetector::check(double loss, double grad_norm) const {
  if (action_ == SpikeAction::off) return "";
  if (grad_norm_limit_ > 0 && grad_norm > grad_norm_limit_)
    return fmt::format("gradient norm {:.4g} > train.spike_grad_norm = {:.4g}", grad_norm, grad_norm_limit_);
  if (factor_ > 0 && history_.size() >= std::min(kMinHistory, window_)) {
    const double m = median();
    if (loss > factor_ * m)
      return fmt::format("loss {:.4f} > train.spike_factor {:.3g} x median {:.4f} of the last {} steps", loss,
                         factor_, m, history_.size());
  }
  return "";
}

void SpikeDetector::accept(int64_t step, double loss) {
  history_.emplace_back(step, loss);
  while (history_.size() > window_) history_.pop_front();
}

void SpikeDetector::forget_after(int64_t step) {
  while (!history_.empty() && history_.back().first > step) history_.pop_back();
}

}  // namespace kumiko::train
