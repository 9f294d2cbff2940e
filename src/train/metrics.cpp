#include "kumiko/train/metrics.h"

#include <sys/resource.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <string>

#include <cmath>
#include <filesystem>

#include <nlohmann/json.hpp>
#include <spdlog/fmt/fmt.h>

#include "kumiko/core/error.h"
#include "kumiko/core/log.h"
#include "kumiko/core/tensorboard.h"

namespace kumiko::train {

namespace {

// A JSON string literal (nlohmann-json escapes it).
std::string json_string(const std::string& s) { return nlohmann::json(s).dump(); }

// One record as a JSON object on one line: {"step":N, fields in order}.
std::string json_line(int64_t step, const std::vector<Metric>& fields) {
  std::string line = fmt::format("{{\"step\":{}", step);
  for (const auto& f : fields) {
    line += ',';  // (appended piece by piece: GCC 12 warns falsely about "," + ... here)
    line += json_string(f.name);
    line += ':';
    if (f.is_text)
      line += json_string(f.text);
    else if (f.is_null || !std::isfinite(*f.number))  // JSON has no NaN or infinity
      line += "null";
    else if (*f.number == std::trunc(*f.number) && std::abs(*f.number) < 9007199254740992.0)  // 2^53
      line += fmt::format("{}", static_cast<int64_t>(*f.number));  // counts and steps exactly
    else
      line += fmt::format("{:.8g}", *f.number);
  }
  return line + "}";
}

}  // namespace

MetricsLog::MetricsLog(const std::string& run_dir, bool tensorboard)
    : path_((std::filesystem::path(run_dir) / "metrics.jsonl").string()) {
  jsonl_.open(path_, std::ios::app);
  KUMIKO_USER_CHECK(jsonl_.good(), path_, ": cannot open for writing");
  if (tensorboard)
    events_ = std::make_unique<tensorboard::EventWriter>((std::filesystem::path(run_dir) / "tensorboard").string());
}

MetricsLog::~MetricsLog() = default;

void MetricsLog::write(int64_t step, const std::vector<Metric>& fields) {
  jsonl_ << json_line(step, fields) << '\n' << std::flush;
  if (!events_) return;
  try {
    for (const auto& f : fields)
      if (!f.is_text && !f.is_null) events_->scalar(f.name, step, *f.number);
    events_->flush();
  } catch (const UserError& e) {
    // A full disk or a lost file system must not end a training job that can still
    // checkpoint: TensorBoard output stops, metrics.jsonl goes on.
    log::get("train")->warn("TensorBoard output stopped: {}", e.what());
    events_.reset();
  }
}

double current_rss_mb() {
  long pages = 0, resident = 0;
  if (FILE* f = std::fopen("/proc/self/statm", "r")) {
    if (std::fscanf(f, "%ld %ld", &pages, &resident) != 2) resident = 0;
    std::fclose(f);
  }
  return static_cast<double>(resident) * static_cast<double>(sysconf(_SC_PAGE_SIZE)) / 1048576.0;
}

double available_host_bytes() {
  std::ifstream in("/proc/meminfo");
  for (std::string line; std::getline(in, line);)
    if (line.rfind("MemAvailable:", 0) == 0) return 1024.0 * std::stod(line.substr(13));  // kB
  return 0;
}

double peak_rss_mb() {
  struct rusage usage {};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_maxrss) / 1024.0;  // ru_maxrss is in KiB on Linux
}

}  // namespace kumiko::train
