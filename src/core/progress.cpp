#include "kumiko/core/progress.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <optional>
#include <utility>

#include <spdlog/fmt/fmt.h>

#include "kumiko/core/error.h"
#include "kumiko/core/log.h"

namespace kumiko {
namespace {

// A value scaled by powers of 1000 to three significant digits.
struct Scaled {
  int prefix = 0;    // 0 = none, 1 = k, 2 = M, ...
  int decimals = 0;  // 2 below 10, 1 below 100, 0 from 100 (and always 0 unscaled)
};

constexpr int kMaxPrefix = 5;  // P

Scaled scale_of(double x) {
  Scaled s;
  double v = std::abs(x);
  while (v >= 999.5 && s.prefix < kMaxPrefix) {
    v /= 1000.0;
    ++s.prefix;
  }
  if (s.prefix > 0) s.decimals = v < 9.995 ? 2 : v < 99.95 ? 1 : 0;
  return s;
}

std::string number_in(double x, const Scaled& s) {
  return fmt::format("{:.{}f}", x / std::pow(1000.0, s.prefix), s.decimals);
}

const char* byte_prefix(int prefix) {
  static const char* kPrefixes[] = {"B", "kB", "MB", "GB", "TB", "PB"};
  return kPrefixes[prefix];
}

const char* count_prefix(int prefix) {
  static const char* kPrefixes[] = {"", "k", "M", "G", "T", "P"};
  return kPrefixes[prefix];
}

// "1.21/2.68 GB": `a` of `b`, both in the scale of `b`; "2.68 GB" without `a`.
std::string amount(std::optional<double> a, double b, const std::string& unit) {
  const Scaled s = scale_of(b);
  const std::string text = a ? number_in(*a, s) + "/" : "";
  if (unit == "B") return text + number_in(b, s) + " " + byte_prefix(s.prefix);
  return text + number_in(b, s) + count_prefix(s.prefix) + " " + unit;
}

std::string rate_text(double per_second, const std::string& unit) {
  if (unit == "B") return format_bytes(per_second) + "/s";
  return format_count(per_second) + " " + unit + "/s";
}

double seconds_between(std::chrono::steady_clock::time_point a,
                       std::chrono::steady_clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

}  // namespace

std::string format_bytes(double bytes) {
  const Scaled s = scale_of(bytes);
  return number_in(bytes, s) + " " + byte_prefix(s.prefix);
}

std::string format_count(double count) {
  const Scaled s = scale_of(count);
  return number_in(count, s) + count_prefix(s.prefix);
}

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds)) return "?";
  const auto s = static_cast<int64_t>(std::min(std::max(seconds, 0.0), 1e12) + 0.5);
  if (s >= 3600) return fmt::format("{}h{:02}m", s / 3600, s / 60 % 60);
  if (s >= 60) return fmt::format("{}m{:02}s", s / 60, s % 60);
  return fmt::format("{}s", s);
}

Progress::Progress(std::string label, int64_t total, std::string unit, ProgressOptions options)
    : label_(std::move(label)),
      total_(total),
      unit_(std::move(unit)),
      options_(std::move(options)),
      mode_(options_.mode) {
  KUMIKO_CHECK(total_ >= 0, "Progress '", label_, "': negative total ", total_);
  KUMIKO_CHECK(options_.log_every_percent >= 1 && options_.log_every_percent <= 100, "Progress '",
               label_, "': log_every_percent must be in [1, 100], got ",
               options_.log_every_percent);
  if (!options_.clock) options_.clock = [] { return std::chrono::steady_clock::now(); };
  if (mode_ == ProgressMode::automatic) {
    // Quiet where the subsystem's info lines are (ranks other than 0, log.level=warn).
    if (!log::get(options_.subsystem)->should_log(spdlog::level::info))
      mode_ = ProgressMode::off;
    else
      mode_ = ::isatty(::fileno(stderr)) ? ProgressMode::tty : ProgressMode::log;
  }
  if (!options_.sink) {
    if (mode_ == ProgressMode::log) {
      options_.sink = [logger = log::get(options_.subsystem)](const std::string& line) {
        logger->info("{}", line);
      };
    } else {
      options_.sink = [](const std::string& text) {
        std::fputs(text.c_str(), stderr);
        std::fflush(stderr);
      };
    }
  }
  start_ = options_.clock();
  last_print_ = start_;
}

Progress::~Progress() {
  try {
    std::lock_guard lock(mutex_);
    if (mode_ == ProgressMode::tty && printed_ && !finished_) options_.sink("\n");
  } catch (...) {  // a destructor never throws; the line stays unterminated
  }
}

void Progress::advance(int64_t n) {
  std::lock_guard lock(mutex_);
  update_locked(done_ + n);
}

void Progress::set(int64_t done) {
  std::lock_guard lock(mutex_);
  update_locked(done);
}

int64_t Progress::done() const {
  std::lock_guard lock(mutex_);
  return done_;
}

void Progress::update_locked(int64_t done) {
  done_ = done;
  if (mode_ == ProgressMode::off || finished_) return;
  const auto now = options_.clock();
  if (seconds_between(last_print_, now) < options_.min_interval_s) return;
  if (mode_ == ProgressMode::log) {
    // The last step (100 %) is the summary's.
    if (total_ == 0 || done_ >= total_) return;
    const int bucket =
        static_cast<int>(100 * std::max<int64_t>(done_, 0) / total_) / options_.log_every_percent;
    if (bucket <= last_bucket_) return;
    last_bucket_ = bucket;
  }
  emit(status_line(seconds_between(start_, now)));
  last_print_ = now;
  printed_ = true;
}

std::string Progress::status_line(double elapsed_s) const {
  const int64_t shown = std::clamp<int64_t>(done_, 0, total_);
  const int64_t percent = total_ == 0 ? 100 : 100 * shown / total_;
  const double rate = elapsed_s > 0 ? static_cast<double>(shown) / elapsed_s : 0.0;
  std::string eta = "--";
  if (shown >= total_)
    eta = "0s";
  else if (rate > 0)
    eta = format_duration(static_cast<double>(total_ - shown) / rate);
  return fmt::format("{} {:3d}% {} {} eta {}", label_, percent,
                     amount(static_cast<double>(shown), static_cast<double>(total_), unit_),
                     rate_text(rate, unit_), eta);
}

void Progress::emit(const std::string& text) {
  if (mode_ == ProgressMode::log) {
    options_.sink(text);
    return;
  }
  // tty: back to the start of the line; blanks cover the rest of a longer old line.
  std::string out = "\r" + text;
  if (drawn_width_ > text.size()) out.append(drawn_width_ - text.size(), ' ');
  drawn_width_ = text.size();
  options_.sink(out);
}

void Progress::finish() {
  std::lock_guard lock(mutex_);
  if (finished_) return;
  finished_ = true;
  if (mode_ == ProgressMode::off) return;
  const double elapsed = seconds_between(start_, options_.clock());
  const auto done = static_cast<double>(done_);
  // "1.21/2.68 GB" when the work stopped short of the total, else what was done.
  std::string line = label_ + " " +
                     (done_ < total_ ? amount(done, static_cast<double>(total_), unit_)
                                     : amount(std::nullopt, done, unit_));
  line += " in " + (elapsed < 60 ? fmt::format("{:.1f}s", elapsed) : format_duration(elapsed));
  if (elapsed > 0) line += " (" + rate_text(done / elapsed, unit_) + ")";
  if (mode_ == ProgressMode::log) {
    options_.sink(line);
    return;
  }
  std::string out = printed_ ? "\r" + line : line;
  if (printed_ && drawn_width_ > line.size()) out.append(drawn_width_ - line.size(), ' ');
  options_.sink(out + "\n");
}

}  // namespace kumiko
