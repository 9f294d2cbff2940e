#pragma once
// The checkpoint folder: run_dir/checkpoints/step_00001000.h5 files plus a
// `latest` pointer file (one line: the file name), replaced atomically.
//
// Commit protocol (docs/operations.md): a checkpoint is written to a temporary
// name, fsynced and renamed (H5Writer::commit); only then is `latest` rewritten
// (temp + fsync + rename). A crash at any point leaves `latest` naming a complete,
// verified file; leftover temporary files are removed at the next start.
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace kumiko::ckpt {

class Store {
 public:
  // Creates the folder; UserError naming it when it cannot be created or written.
  explicit Store(std::string dir);

  const std::string& dir() const { return dir_; }
  std::string path_for(int64_t step) const;  // dir/step_%08d.h5
  // Completed checkpoint files, newest step first.
  std::vector<std::string> list() const;
  // The file `latest` names (absolute path), if the pointer exists.
  std::optional<std::string> latest() const;
  // Points `latest` at `path` atomically.
  void set_latest(const std::string& path) const;
  // Removes temporary files left by an interrupted save; returns how many.
  int remove_partials() const;
  // Keeps the newest `keep_last` checkpoints (0 = all) and never the one `latest` names.
  std::vector<std::string> apply_retention(int keep_last) const;

 private:
  std::string dir_;
};

// Reads every dataset of a checkpoint or weights file (verifying the Fletcher-32
// checksum of each) and checks the required structure. Returns a list of
// problems, empty when the file is sound. With parts > 1 only dataset k with
// k % parts == part is read (and the structure only by part 0): the ranks of a job
// verify one file together, each reading its share.
std::vector<std::string> verify_file(const std::string& path, int part = 0, int parts = 1);

// Step number encoded in a checkpoint file name, or -1.
int64_t step_of(const std::string& path);

}  // namespace kumiko::ckpt
