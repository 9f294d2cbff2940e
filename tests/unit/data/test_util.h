#pragma once
// Helpers shared by the data tests: a scratch folder and error-message checks.
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <sstream>
#include <string>

#include <gtest/gtest.h>

#include "kumiko/core/error.h"

namespace kumiko::data::test {

// A fresh folder under the system temp dir, removed at scope exit.
class ScratchDir {
 public:
  explicit ScratchDir(const std::string& name)
      : path_(std::filesystem::temp_directory_path() /
              ("kumiko_data_" + name + "_" + std::to_string(::getpid()))) {
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~ScratchDir() { std::filesystem::remove_all(path_); }
  std::string file(const std::string& name) const { return (path_ / name).string(); }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

inline void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
}

inline std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

inline std::string corpus(const std::string& name, size_t max_bytes) {
  std::string text = read_bytes(std::string(KUMIKO_SOURCE_DIR) + "/data/" + name);
  return text.substr(0, max_bytes);
}

}  // namespace kumiko::data::test

// Expects `stmt` to throw kumiko::UserError whose one-line message contains every part.
#define EXPECT_USER_ERROR(stmt, ...)                                                  \
  do {                                                                                \
    try {                                                                             \
      stmt;                                                                           \
      ADD_FAILURE() << "expected a UserError from " #stmt;                            \
    } catch (const ::kumiko::UserError& e) {                                          \
      const std::string message = e.what();                                           \
      EXPECT_EQ(message.find('\n'), std::string::npos) << message;                    \
      for (const std::string& part : std::initializer_list<std::string>{__VA_ARGS__}) \
        EXPECT_NE(message.find(part), std::string::npos)                              \
            << "message '" << message << "' lacks '" << part << "'";                  \
    }                                                                                 \
  } while (0)
