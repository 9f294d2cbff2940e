#include "kumiko/ckpt/store.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "kumiko/ckpt/h5file.h"
#include "kumiko/core/error.h"

namespace kumiko::ckpt {

namespace fs = std::filesystem;

namespace {
constexpr const char* kPrefix = "step_";
constexpr const char* kSuffix = ".h5";

void fsync_path(const fs::path& p, bool directory) {
  const int fd = ::open(p.c_str(), directory ? (O_RDONLY | O_DIRECTORY) : O_RDONLY);
  if (fd < 0) return;
  ::fsync(fd);
  ::close(fd);
}
}  // namespace

Store::Store(std::string dir) : dir_(std::move(dir)) {
  std::error_code ec;
  fs::create_directories(dir_, ec);
  KUMIKO_USER_CHECK(!ec, dir_, ": cannot create the checkpoint folder (checkpoint.dir): ", ec.message());
  KUMIKO_USER_CHECK(::access(dir_.c_str(), W_OK | X_OK) == 0, dir_,
                    ": the checkpoint folder (checkpoint.dir) is not writable");
}

std::string Store::path_for(int64_t step) const {
  char name[64];
  std::snprintf(name, sizeof name, "%s%08lld%s", kPrefix, static_cast<long long>(step), kSuffix);
  return (fs::path(dir_) / name).string();
}

int64_t step_of(const std::string& path) {
  const std::string name = fs::path(path).filename().string();
  if (name.rfind(kPrefix, 0) != 0 || name.size() <= 8 || name.substr(name.size() - 3) != kSuffix) return -1;
  const std::string digits = name.substr(5, name.size() - 5 - 3);
  if (digits.empty() || !std::all_of(digits.begin(), digits.end(), ::isdigit)) return -1;
  return std::stoll(digits);
}

std::vector<std::string> Store::list() const {
  std::vector<std::string> files;
  for (const auto& e : fs::directory_iterator(dir_))
    if (e.is_regular_file() && step_of(e.path().string()) >= 0) files.push_back(e.path().string());
  std::sort(files.begin(), files.end(),
            [](const std::string& a, const std::string& b) { return step_of(a) > step_of(b); });
  return files;
}

std::optional<std::string> Store::latest() const {
  std::ifstream in(fs::path(dir_) / "latest");
  std::string name;
  if (!in || !std::getline(in, name) || name.empty()) return std::nullopt;
  return (fs::path(dir_) / name).string();
}

void Store::set_latest(const std::string& path) const {
  const fs::path tmp = fs::path(dir_) / ("latest.tmp-" + std::to_string(::getpid()));
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << fs::path(path).filename().string() << "\n";
    out.flush();
    KUMIKO_CHECK(out.good(), "cannot write ", tmp.string());
  }
  fsync_path(tmp, false);
  fs::rename(tmp, fs::path(dir_) / "latest");
  fsync_path(dir_, true);
}

int Store::remove_partials() const {
  int removed = 0;
  for (const auto& e : fs::directory_iterator(dir_)) {
    const std::string name = e.path().filename().string();
    if (name.find(".tmp-") != std::string::npos) {
      fs::remove(e.path());
      ++removed;
    }
  }
  return removed;
}

std::vector<std::string> Store::apply_retention(int keep_last) const {
  std::vector<std::string> removed;
  if (keep_last <= 0) return removed;
  const auto keep = latest();
  const auto files = list();
  for (size_t i = static_cast<size_t>(keep_last); i < files.size(); ++i) {
    if (keep && fs::equivalent(*keep, files[i])) continue;
    fs::remove(files[i]);
    removed.push_back(files[i]);
  }
  return removed;
}

std::vector<std::string> verify_file(const std::string& path, int part, int parts) {
  std::vector<std::string> problems;
  try {
    H5Reader r(path);
    if (part == 0) {
      if (!r.has_attr("format")) problems.push_back("missing attribute 'format'");
      if (!r.has_attr("format_version")) problems.push_back("missing attribute 'format_version'");
      if (!r.has("/config")) problems.push_back("missing dataset 'config'");
      if (!r.has("/model")) problems.push_back("missing group 'model'");
    }
    // Read every dataset under every group (this part's share, in a fixed order): HDF5
    // verifies each chunk's checksum.
    int64_t index = 0;
    std::vector<std::string> pending = {"/"};
    while (!pending.empty()) {
      const std::string group = pending.back();
      pending.pop_back();
      for (const auto& name : r.list(group)) {
        const std::string full = (group == "/" ? "/" : group + "/") + name;
        if (r.is_group(full)) {
          pending.push_back(full);
          continue;
        }
        if (index++ % parts != part) continue;
        try {
          r.read_raw(full);
        } catch (const Error& e) {
          problems.push_back(e.what());
        }
      }
    }
  } catch (const Error& e) {
    problems.push_back(e.what());
  }
  return problems;
}

}  // namespace kumiko::ckpt
