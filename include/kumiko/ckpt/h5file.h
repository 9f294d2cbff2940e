#pragma once
// A small typed layer over HDF5 for kumiko's weight and checkpoint files.
// hdf5.h stays inside src/ckpt (STYLE.md rule 1); callers see only these classes.
//
// Every numeric dataset is chunked and written with HDF5's Fletcher-32 checksum
// filter, so a flipped byte is detected when the dataset is read (or verified).
// H5Writer writes to "<path>.tmp-<pid>" (the pid of the writer, or of group rank 0 when
// a group writes one file through MPI-IO), and commit() flushes, fsyncs and renames it
// to <path>: a crash never leaves a half-written file under the final name.
// File locking: HDF5's own (fcntl) where the file system supports it, skipped where it
// does not (NFS, some Lustre mounts); HDF5_USE_FILE_LOCKING=FALSE turns it off.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kumiko/core/tensor.h"

namespace kumiko::comm {
class Communicator;
}

namespace kumiko::ckpt {

// A box inside a dataset: its first index and extent in each dimension.
struct Slab {
  std::vector<int64_t> start, count;
};
// The slabs covering runs of a dataset's row-major elements, (offset, count) pairs in
// increasing offset order (model::ParameterSpec::for_each_run's logical runs): one
// slab per stretch of equal column ranges over consecutive rows. Datasets of rank 1
// and 2 (kumiko's tensors).
std::vector<Slab> slabs_of_runs(const Shape& shape, const std::vector<std::pair<int64_t, int64_t>>& runs);

class H5Writer {
 public:
  // A file written by this process alone.
  explicit H5Writer(std::string path);
  // One file written by every member of `group` through MPI-IO (parallel HDF5): every
  // member calls every method below, with the same names, shapes and attribute values,
  // in the same order (they are collective). Needs parallel_available().
  H5Writer(std::string path, comm::Communicator& group);
  // Built against parallel HDF5 (libhdf5-openmpi-dev) and MPI.
  static bool parallel_available();
  ~H5Writer();  // removes the temporary file unless commit() succeeded
  H5Writer(const H5Writer&) = delete;
  H5Writer& operator=(const H5Writer&) = delete;

  bool parallel() const { return group_ != nullptr; }

  // Datasets; names may contain '/' (groups are created as needed). In a parallel
  // writer the data of group rank 0 is written (the others' is ignored).
  void write_f32(const std::string& name, const Shape& shape, const float* data);
  // Part of a float dataset: `data` holds the elements of `slabs` in the dataset's
  // row-major order (the order in which HDF5 visits a selection; slabs_of_runs of
  // increasing runs gives them in that order). Parallel: each member writes its own
  // slabs (none is fine) in one collective write; the members' slabs must not overlap,
  // and elements nobody writes read as 0. Serial: the slabs must cover the dataset.
  void write_f32_slabs(const std::string& name, const Shape& shape, const std::vector<Slab>& slabs,
                       const float* data);
  void write_f64(const std::string& name, const Shape& shape, const double* data);
  void write_i32(const std::string& name, const Shape& shape, const int32_t* data);
  void write_i64(const std::string& name, const Shape& shape, const int64_t* data);
  void write_string(const std::string& name, const std::string& text);
  // Attributes on the root group.
  void set_attr(const std::string& key, const std::string& value);
  void set_attr(const std::string& key, int64_t value);

  // Closes, fsyncs and renames the file to its final path (parallel: collective; group
  // rank 0 renames after every member has closed the file).
  void commit();
  const std::string& path() const { return path_; }

 private:
  struct Impl;
  std::string path_;
  std::string temp_path_;
  comm::Communicator* group_ = nullptr;
  std::unique_ptr<Impl> impl_;
};

class H5Reader {
 public:
  // Opens an existing file; UserError naming the file if it is missing or not HDF5.
  explicit H5Reader(std::string path);
  ~H5Reader();
  H5Reader(const H5Reader&) = delete;
  H5Reader& operator=(const H5Reader&) = delete;

  bool has(const std::string& name) const;
  Shape shape(const std::string& name) const;
  // Names of the datasets directly under a group ("model" -> "embed.tokens.weight", ...).
  std::vector<std::string> list(const std::string& group) const;
  // Reads a dataset whose shape must equal `expected` (UserError naming file and
  // tensor otherwise); the checksum filter is verified on the way.
  void read_f32(const std::string& name, const Shape& expected, float* out) const;
  // Only `slabs` of a float dataset into `out`, in the dataset's row-major order (as
  // H5Writer::write_f32_slabs); every rank of a job reads its own shards this way.
  void read_f32_slabs(const std::string& name, const Shape& expected, const std::vector<Slab>& slabs,
                      float* out) const;
  void read_f64(const std::string& name, const Shape& expected, double* out) const;
  void read_i32(const std::string& name, const Shape& expected, int32_t* out) const;
  void read_i64(const std::string& name, const Shape& expected, int64_t* out) const;
  std::string read_string(const std::string& name) const;
  std::string attr_string(const std::string& key) const;
  int64_t attr_int(const std::string& key) const;
  bool has_attr(const std::string& key) const;
  bool is_group(const std::string& name) const;
  // Reads a whole dataset of any type as raw bytes (verifying its checksum).
  std::vector<char> read_raw(const std::string& name) const;
  const std::string& path() const { return path_; }

 private:
  struct Impl;
  std::string path_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace kumiko::ckpt
