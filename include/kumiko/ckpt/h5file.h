#pragma once
// A small typed layer over HDF5 for kumiko's weight and checkpoint files.
// hdf5.h stays inside src/ckpt (STYLE.md rule 1); callers see only these classes.
//
// Every numeric dataset is chunked and written with HDF5's Fletcher-32 checksum
// filter, so a flipped byte is detected when the dataset is read (or verified).
// H5Writer writes to "<path>.tmp-<pid>", and commit() flushes, fsyncs and renames it
// to <path>: a crash never leaves a half-written file under the final name.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kumiko/core/tensor.h"

namespace kumiko::ckpt {

class H5Writer {
 public:
  explicit H5Writer(std::string path);
  ~H5Writer();  // removes the temporary file unless commit() succeeded
  H5Writer(const H5Writer&) = delete;
  H5Writer& operator=(const H5Writer&) = delete;

  // Datasets; names may contain '/' (groups are created as needed).
  void write_f32(const std::string& name, const Shape& shape, const float* data);
  void write_f64(const std::string& name, const Shape& shape, const double* data);
  void write_i32(const std::string& name, const Shape& shape, const int32_t* data);
  void write_i64(const std::string& name, const Shape& shape, const int64_t* data);
  void write_string(const std::string& name, const std::string& text);
  // Attributes on the root group.
  void set_attr(const std::string& key, const std::string& value);
  void set_attr(const std::string& key, int64_t value);

  // Closes, fsyncs and renames the file to its final path.
  void commit();
  const std::string& path() const { return path_; }

 private:
  struct Impl;
  std::string path_;
  std::string temp_path_;
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
