#pragma once
// What a run reports per step, per evaluation and per event (skipped step, spike,
// checkpoint, straggler): one JSON object per line in <run_dir>/metrics.jsonl and,
// with [log] tensorboard, the same numbers as TensorBoard scalars under the same
// names in <run_dir>/tensorboard/ (docs/training.md lists the fields). Written by the
// rank that writes files (rank 0); every line is flushed at once, so whoever tails
// the file or watches TensorBoard sees a step as soon as it ends.
#include <cstdint>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace kumiko::tensorboard {
class EventWriter;
}

namespace kumiko::train {

// One field of a record: a number, an undefined number (JSON null, no scalar) or a
// string (JSON only).
struct Metric {
  Metric(std::string n, double v) : name(std::move(n)), number(v) {}
  Metric(std::string n, std::optional<double> v) : name(std::move(n)), number(v), is_null(!v) {}
  Metric(std::string n, std::string t) : name(std::move(n)), text(std::move(t)), is_text(true) {}
  Metric(std::string n, const char* t) : Metric(std::move(n), std::string(t)) {}
  std::string name;
  std::optional<double> number;
  std::string text;
  bool is_null = false, is_text = false;
};

class MetricsLog {
 public:
  // Opens (appends to) <run_dir>/metrics.jsonl and, when `tensorboard`, an event file
  // in <run_dir>/tensorboard/. UserError naming the path if either cannot be written.
  MetricsLog(const std::string& run_dir, bool tensorboard);
  ~MetricsLog();
  MetricsLog(const MetricsLog&) = delete;
  MetricsLog& operator=(const MetricsLog&) = delete;

  // {"step":step, <fields in order>}; numbers also go to TensorBoard (tag = name).
  void write(int64_t step, const std::vector<Metric>& fields);

 private:
  std::ofstream jsonl_;
  std::string path_;
  std::unique_ptr<tensorboard::EventWriter> events_;
};

// Peak resident memory of this process so far, in MB (getrusage: ru_maxrss).
double peak_rss_mb();
// This process's resident memory now (MiB), and the host memory the kernel reports
// as available to new allocations (MemAvailable, bytes; 0 when unknown).
double current_rss_mb();
double available_host_bytes();

}  // namespace kumiko::train
