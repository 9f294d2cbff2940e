#pragma once
// safetensors files (https://github.com/huggingface/safetensors), the weights format
// of Hugging Face model folders.
//
// Layout: 8-byte little-endian uint64 N, then N bytes of UTF-8 JSON (possibly padded
// with spaces) mapping each tensor name to {"dtype", "shape", "data_offsets":
// [begin, end)} (offsets relative to the byte after the header), plus an optional
// "__metadata__" {string: string}; then the data buffer, row-major little endian.
// A sharded folder has model.safetensors.index.json = {"metadata": {"total_size"},
// "weight_map": {tensor name: shard file name}}.
//
// Reading is strict about anything that could index outside the data (every problem
// is a kumiko::UserError naming the file and tensor) and lenient about layout: gaps
// between tensors and unused trailing bytes are accepted. Writing produces what the
// official library reads: contiguous offsets from 0, the buffer fully covered.
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace kumiko::ckpt::safetensors {

struct TensorInfo {
  std::string name, dtype;
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;  // byte range in the data buffer, end exclusive
};

// Parses and validates the header JSON of a file whose data buffer holds `data_bytes`;
// `what` names the file in errors. Checks: a JSON object; each tensor entry an object
// with a known "dtype" string, a "shape" of non-negative integers and "data_offsets"
// [begin, end] with begin <= end <= data_bytes and end - begin == numel * dtype size;
// no two tensors overlap; "__metadata__" (if present) maps strings to strings.
// Returns the tensors sorted by begin and fills `metadata` if given.
std::vector<TensorInfo> parse_header(const std::string& json, uint64_t data_bytes,
                                     const std::string& what,
                                     std::map<std::string, std::string>* metadata = nullptr);

// Bytes per element of a safetensors dtype ("F32" -> 4), 0 if unknown.
int dtype_size(const std::string& dtype);

// One .safetensors file: the header is read and validated at construction, tensors
// are read on demand.
class File {
 public:
  // UserError: missing file, shorter than 8 bytes, header length past the end of the
  // file or over 100 MB, or any parse_header problem.
  explicit File(const std::string& path);

  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const TensorInfo* find(const std::string& name) const;  // nullptr if absent
  // The tensor as float32: F32 as stored, F16/BF16 exactly, F64 rounded to nearest.
  // A non-empty `expected_shape` must equal the stored shape.
  std::vector<float> read_f32(const std::string& name,
                              const std::vector<int64_t>& expected_shape = {}) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  uint64_t data_start_ = 0;  // 8 + header length
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t> by_name_;  // name -> index in tensors_
  std::map<std::string, std::string> metadata_;
};

// A Hugging Face model folder: model.safetensors or, when that is absent,
// model.safetensors.index.json and the shards it names (each must exist and hold the
// tensors the index assigns to it).
class Folder {
 public:
  explicit Folder(const std::string& dir);

  std::vector<std::string> names() const;  // every tensor name, sorted
  bool has(const std::string& name) const { return where_.count(name) != 0; }
  std::vector<float> read_f32(const std::string& name,
                              const std::vector<int64_t>& expected_shape = {}) const;

 private:
  std::string dir_;
  std::vector<File> files_;
  std::map<std::string, size_t> where_;  // tensor name -> index in files_
};

struct OutTensor {
  std::string name;
  std::vector<int64_t> shape;
  const float* data;  // numel(shape) values, row-major
};

// Writes F32 tensors in the given order (contiguous offsets; the header is padded with
// spaces so the data starts 8-byte aligned) with `metadata`, atomically (temp file,
// fsync, rename).
void write_file(const std::string& path, const std::vector<OutTensor>& tensors,
                const std::map<std::string, std::string>& metadata = {});

// Writes a model folder (created if needed) as transformers does: one model.safetensors
// when the tensor bytes total <= max_shard_bytes, else model-00001-of-0000N.safetensors
// shards (tensors whole and in order; a new shard starts when the next tensor would push
// the current one past max_shard_bytes) plus model.safetensors.index.json. Returns the
// paths written, the index last.
std::vector<std::string> write_folder(const std::string& dir, const std::vector<OutTensor>& tensors,
                                      uint64_t max_shard_bytes,
                                      const std::map<std::string, std::string>& metadata = {
                                          {"format", "pt"}});

}  // namespace kumiko::ckpt::safetensors
