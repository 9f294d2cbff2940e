#pragma once
// Logging: one spdlog logger per subsystem ("train", "data", "comm", "ckpt",
// "config", "model"), each line prefixed with the rank. Rank 0 logs at the
// configured level; other ranks log warnings and errors only, unless all_ranks.
#include <memory>
#include <string>

#include <spdlog/spdlog.h>

namespace kumiko::log {

struct Options {
  int rank = 0;
  int world_size = 1;
  std::string level = "info";  // trace|debug|info|warn|error|off
  bool all_ranks = false;
};

// Configures every subsystem logger (existing and future). Safe to call again.
void init(const Options& options);

// The logger of one subsystem, created on first use.
std::shared_ptr<spdlog::logger> get(const std::string& subsystem);

}  // namespace kumiko::log
