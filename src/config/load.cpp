// Loading a configuration without a command line: from an INI file (tests,
// tools) or from the INI text stored inside a weights or checkpoint file.
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "kumiko/config/config.h"
#include "kumiko/core/error.h"

namespace kumiko::config {

Config load_file(const std::string& path) {
  Config cfg;
  CLI::App app;
  add_options(app, cfg);
  std::vector<std::string> args = {path, "--config"};  // CLI11 takes them reversed
  try {
    app.parse(args);
  } catch (const CLI::ParseError& e) {
    throw UserError(describe_parse_error(e, cfg));
  }
  validate(cfg);
  return cfg;
}

Config from_text(const std::string& text, const std::string& origin) {
  const auto tmp = std::filesystem::temp_directory_path() /
                   ("kumiko-config-" + std::to_string(::getpid()) + ".ini");
  std::ofstream(tmp) << text;
  try {
    Config cfg = load_file(tmp.string());
    std::filesystem::remove(tmp);
    cfg.source_file = origin;
    return cfg;
  } catch (const UserError& e) {
    std::filesystem::remove(tmp);
    throw UserError(origin + ": stored configuration is invalid: " + e.what());
  }
}

}  // namespace kumiko::config
