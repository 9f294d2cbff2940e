#include "kumiko/core/log.h"

#include <mutex>

#include <spdlog/sinks/stdout_color_sinks.h>

#include "kumiko/core/error.h"

namespace kumiko::log {
namespace {

std::mutex g_mutex;
Options g_options;

void configure(spdlog::logger& logger) {
  const bool quiet_rank = g_options.rank != 0 && !g_options.all_ranks;
  auto level = spdlog::level::from_str(g_options.level);
  if (quiet_rank && level < spdlog::level::warn) level = spdlog::level::warn;
  logger.set_level(level);
  logger.set_pattern("[%H:%M:%S] [rank " + std::to_string(g_options.rank) + "] [%n] %^%l%$: %v");
}

}  // namespace

void init(const Options& options) {
  static const char* kLevels[] = {"trace", "debug", "info", "warn", "error", "critical", "off"};
  bool known = false;
  for (const char* l : kLevels) known = known || options.level == l;
  KUMIKO_USER_CHECK(known, "log.level: expected one of trace|debug|info|warn|error|off, got '",
                    options.level, "'");
  std::lock_guard lock(g_mutex);
  g_options = options;
  spdlog::apply_all([](const std::shared_ptr<spdlog::logger>& l) { configure(*l); });
}

std::shared_ptr<spdlog::logger> get(const std::string& subsystem) {
  std::lock_guard lock(g_mutex);
  if (auto existing = spdlog::get(subsystem)) return existing;
  auto logger = spdlog::stderr_color_mt(subsystem);
  configure(*logger);
  return logger;
}

}  // namespace kumiko::log
