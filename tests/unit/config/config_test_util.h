#pragma once
// Helpers for the config tests: temporary INI files and parsing a command line through a
// subcommand set up with kumiko::config::add_options, the way the CLI does.
#include <gtest/gtest.h>

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "kumiko/config/config.h"
#include "kumiko/core/error.h"

namespace kumiko::config::testing {

// A file in a fresh temporary folder, removed with the object.
class TempIni {
 public:
  explicit TempIni(const std::string& text, const std::string& name = "test.ini") {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = std::filesystem::temp_directory_path() /
           ("kumiko_config_" + std::string(info->name()) + "_" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir_);
    path_ = (dir_ / name).string();
    std::ofstream(path_) << text;
  }
  ~TempIni() { std::filesystem::remove_all(dir_); }
  const std::string& path() const { return path_; }

 private:
  std::filesystem::path dir_;
  std::string path_;
};

// Parses `kumiko cmd <args...>`; returns "" on success or kumiko's one-line message.
inline std::string parse(Config& config, const std::vector<std::string>& args) {
  CLI::App app{"test"};
  CLI::App* sub = app.add_subcommand("cmd");
  add_options(*sub, config);
  std::vector<std::string> words = {"kumiko", "cmd"};
  words.insert(words.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& w : words) argv.push_back(w.data());
  try {
    app.parse(static_cast<int>(argv.size()), argv.data());
  } catch (const CLI::ParseError& e) {
    return describe_parse_error(e, config);
  }
  return "";
}

// The message validate() throws, or "" when the configuration is valid.
inline std::string validation_error(const Config& config) {
  try {
    validate(config);
  } catch (const UserError& e) {
    return e.what();
  }
  return "";
}

}  // namespace kumiko::config::testing
