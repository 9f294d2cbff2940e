#pragma once
// Progress of long work (prepare's encoding, checkpoint save and load): done / total,
// rate and ETA.
//
// Two ways to show it:
//   tty: one line on stderr redrawn in place with '\r', at most every min_interval_s:
//          prepare: encoding  45% 1.21/2.68 GB 310 MB/s eta 5s
//   log: for batch jobs and CI logs, one info line on the subsystem's logger each
//        time another log_every_percent of the total is crossed (10 %, 20 %, ...,
//        90 %; a jump over several steps prints one line), never more often than
//        min_interval_s.
// Both end with one summary line from finish():
//          prepare: encoding 2.68 GB in 8.6s (310 MB/s)
// The automatic mode picks tty when stderr is a terminal, log otherwise, and stays
// silent when the subsystem's logger does not print info lines (ranks other than 0,
// log.level = warn).
#include <chrono>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>

namespace kumiko {

enum class ProgressMode { automatic, tty, log, off };

struct ProgressOptions {
  using Clock = std::function<std::chrono::steady_clock::time_point()>;
  using Sink = std::function<void(const std::string&)>;

  std::string subsystem = "data";  // logger of log mode (kumiko::log::get)
  ProgressMode mode = ProgressMode::automatic;
  int log_every_percent = 10;   // log mode: one line per this many percent, in [1, 100]
  double min_interval_s = 0.2;  // no two lines closer than this, except the summary
  // Receives each output: in log mode one line without newline; in tty mode the raw
  // text for stderr ("\r..." redraws, the summary ends with "\n"). Default: the
  // subsystem's logger (log mode) or stderr (tty mode).
  Sink sink;
  Clock clock;  // default: std::chrono::steady_clock::now
};

class Progress {
 public:
  // `unit` "B" formats amounts as bytes (kB, MB, GB; powers of 1000); any other unit
  // ("tokens") formats counts with k/M/G and the unit after them. total >= 0.
  Progress(std::string label, int64_t total, std::string unit = "B", ProgressOptions options = {});
  // Ends a drawn tty line without a summary (the work failed or was abandoned).
  ~Progress();
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;

  // Thread-safe. advance adds n; set replaces the amount done. Amounts above the
  // total are counted (the summary shows them) but shown as 100 %.
  void advance(int64_t n);
  void set(int64_t done);
  // Prints the summary (amount, time, rate) once; later calls do nothing.
  void finish();

  int64_t done() const;
  // The resolved mode: tty, log or off (never automatic).
  ProgressMode mode() const { return mode_; }

 private:
  void update_locked(int64_t done);  // mutex_ held
  std::string status_line(double elapsed_s) const;
  void emit(const std::string& text);

  std::string label_;
  int64_t total_;
  std::string unit_;
  ProgressOptions options_;
  ProgressMode mode_;
  std::chrono::steady_clock::time_point start_;
  mutable std::mutex mutex_;
  int64_t done_ = 0;
  bool printed_ = false;  // a status line was printed since start
  std::chrono::steady_clock::time_point last_print_;
  int last_bucket_ = 0;     // log mode: highest step already logged
  size_t drawn_width_ = 0;  // tty mode: length of the line on screen
  bool finished_ = false;
};

// "512 B", "1.00 kB", "45.3 MB", "2.68 GB": three significant digits, powers of 1000.
std::string format_bytes(double bytes);
// "950", "1.21k", "3.10M": three significant digits (k, M, G, T).
std::string format_count(double count);
// A duration as progress lines and the trainer print it: "5s", "1m02s", "3h05m".
std::string format_duration(double seconds);

}  // namespace kumiko
