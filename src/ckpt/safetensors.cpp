#include "kumiko/ckpt/safetensors.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "kumiko/core/error.h"

namespace kumiko::ckpt::safetensors {

namespace fs = std::filesystem;
using json = nlohmann::json;

static_assert(std::endian::native == std::endian::little, "safetensors data is little endian");

namespace {

constexpr uint64_t kMaxHeaderBytes = 100'000'000;  // the official library's limit
constexpr const char* kSingleName = "model.safetensors";
constexpr const char* kIndexName = "model.safetensors.index.json";

// A name for a one-line message: quoted, control characters escaped.
std::string in_quotes(const std::string& s) {
  std::string out = "'";
  for (const unsigned char c : s) {
    if (c >= 0x20 && c != 0x7f) {
      out += static_cast<char>(c);
    } else {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    }
  }
  return out + "'";
}

// A JSON value for a message, shortened.
std::string brief(const json& j) {
  std::string s = j.dump(-1, ' ', true, json::error_handler_t::replace);
  return s.size() > 40 ? s.substr(0, 37) + "..." : s;
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::ostringstream os;
  os << '[';
  for (size_t i = 0; i < shape.size(); ++i) os << (i ? ", " : "") << shape[i];
  return os.str() + ']';
}

// numel(shape) * elem_bytes, or false on overflow. A zero dimension makes it 0.
bool byte_count(const std::vector<int64_t>& shape, uint64_t elem_bytes, uint64_t* out) {
  if (std::find(shape.begin(), shape.end(), 0) != shape.end()) return *out = 0, true;
  uint64_t n = elem_bytes;
  for (const int64_t d : shape)
    if (__builtin_mul_overflow(n, static_cast<uint64_t>(d), &n)) return false;
  *out = n;
  return true;
}

json parse_json(const std::string& text, const std::string& what, const char* part) {
  try {
    return json::parse(text);
  } catch (const json::parse_error& e) {
    KUMIKO_USER_CHECK(false, what, ": ", part, " is not valid JSON (error at byte ", e.byte, ")");
  } catch (const json::exception& e) {  // e.g. out_of_range 406: a number too large for a double
    KUMIKO_USER_CHECK(false, what, ": ", part, " is not valid JSON (", e.what(), ")");
  }
  return {};
}

float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1fu, mantissa = h & 0x3ffu;
  if (exponent == 0) {  // zero or subnormal: mantissa * 2^-24, exact in float
    const float v = std::ldexp(static_cast<float>(mantissa), -24);
    return sign ? -v : v;
  }
  const uint32_t e32 = exponent == 0x1f ? 0xffu : exponent + 112;  // rebias 15 -> 127; inf/nan stay
  return std::bit_cast<float>(sign | (e32 << 23) | (mantissa << 13));
}

// model.safetensors, its index, or a shard such as model-00001-of-00004.safetensors.
bool is_weights_file(const std::string& f) {
  const auto digits = [&](size_t at) {
    return std::all_of(f.begin() + at, f.begin() + at + 5,
                       [](char c) { return c >= '0' && c <= '9'; });
  };
  return f == kSingleName || f == kIndexName ||
         (f.size() == 32 && f.rfind("model-", 0) == 0 && f.compare(11, 4, "-of-") == 0 &&
          f.compare(20, 12, ".safetensors") == 0 && digits(6) && digits(15));
}

// Writes all of [p, p+n) to fd; false on error.
bool write_all(int fd, const void* p, size_t n) {
  const char* c = static_cast<const char*>(p);
  while (n > 0) {
    const ssize_t w = ::write(fd, c, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    c += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

// Writes `parts` (pointer, size) to path atomically: temp file, fsync, rename.
void write_atomically(const std::string& path,
                      const std::vector<std::pair<const void*, size_t>>& parts) {
  const std::string tmp = path + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  KUMIKO_CHECK(fd >= 0, "cannot create ", tmp, ": ", std::strerror(errno));
  bool ok = true;
  for (const auto& [p, n] : parts) ok = ok && write_all(fd, p, n);
  ok = ok && ::fsync(fd) == 0;
  const int err = errno;
  ok = (::close(fd) == 0) && ok;
  if (!ok) ::unlink(tmp.c_str());
  KUMIKO_CHECK(ok, "cannot write ", tmp, ": ", std::strerror(err));
  KUMIKO_CHECK(::rename(tmp.c_str(), path.c_str()) == 0, "cannot rename ", tmp, " to ", path, ": ",
               std::strerror(errno));
  const int dfd =
      ::open(fs::path(path).parent_path().empty() ? "." : fs::path(path).parent_path().c_str(),
             O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

}  // namespace

int dtype_size(const std::string& dtype) {
  static const std::map<std::string, int> sizes = {
      {"BOOL", 1}, {"U8", 1},  {"I8", 1},  {"F8_E5M2", 1}, {"F8_E4M3", 1}, {"F8_E8M0", 1},
      {"I16", 2},  {"U16", 2}, {"F16", 2}, {"BF16", 2},    {"I32", 4},     {"U32", 4},
      {"F32", 4},  {"I64", 8}, {"U64", 8}, {"F64", 8}};
  const auto it = sizes.find(dtype);
  return it == sizes.end() ? 0 : it->second;
}

std::vector<TensorInfo> parse_header(const std::string& text, uint64_t data_bytes,
                                     const std::string& what,
                                     std::map<std::string, std::string>* metadata) {
  const json header = parse_json(text, what, "header");
  KUMIKO_USER_CHECK(header.is_object(), what, ": header is a JSON ", header.type_name(),
                    ", expected an object");
  std::vector<TensorInfo> tensors;
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      KUMIKO_USER_CHECK(entry.is_object(), what, ": __metadata__ is a JSON ", entry.type_name(),
                        ", expected an object of strings");
      for (const auto& [key, value] : entry.items()) {
        KUMIKO_USER_CHECK(value.is_string(), what, ": __metadata__ key ", in_quotes(key), " is ",
                          brief(value), ", expected a string");
        if (metadata) (*metadata)[key] = value.get<std::string>();
      }
      continue;
    }
    const std::string where = what + ": tensor " + in_quotes(name);
    KUMIKO_USER_CHECK(entry.is_object(), where, ": entry is ", brief(entry),
                      ", expected an object");
    for (const char* key : {"dtype", "shape", "data_offsets"})
      KUMIKO_USER_CHECK(entry.contains(key), where, ": \"", key, "\" is missing");
    TensorInfo t;
    t.name = name;
    const json& dtype = entry["dtype"];
    KUMIKO_USER_CHECK(dtype.is_string(), where, ": dtype is ", brief(dtype), ", expected a string");
    t.dtype = dtype.get<std::string>();
    const int elem = dtype_size(t.dtype);
    KUMIKO_USER_CHECK(elem > 0, where, ": unknown dtype ", in_quotes(t.dtype));
    const json& shape = entry["shape"];
    KUMIKO_USER_CHECK(shape.is_array(), where, ": shape is ", brief(shape),
                      ", expected an array of integers");
    for (const json& d : shape) {
      const bool ok = d.is_number_unsigned() &&
                      d.get<uint64_t>() <= uint64_t{std::numeric_limits<int64_t>::max()};
      KUMIKO_USER_CHECK(ok, where, ": shape ", brief(shape), " has ", brief(d),
                        ", expected non-negative integers");
      t.shape.push_back(d.get<int64_t>());
    }
    const json& offsets = entry["data_offsets"];
    const bool pair = offsets.is_array() && offsets.size() == 2 &&
                      offsets[0].is_number_unsigned() && offsets[1].is_number_unsigned();
    KUMIKO_USER_CHECK(pair, where, ": data_offsets is ", brief(offsets),
                      ", expected [begin, end] of non-negative integers");
    t.begin = offsets[0].get<uint64_t>();
    t.end = offsets[1].get<uint64_t>();
    KUMIKO_USER_CHECK(t.begin <= t.end, where, ": data_offsets [", t.begin, ", ", t.end,
                      "] end before begin");
    KUMIKO_USER_CHECK(t.end <= data_bytes, where, ": data_offsets end ", t.end,
                      " is past the end of the ", data_bytes, "-byte data buffer");
    uint64_t bytes = 0;
    KUMIKO_USER_CHECK(byte_count(t.shape, static_cast<uint64_t>(elem), &bytes), where, ": shape ",
                      shape_str(t.shape), " of ", t.dtype, " is too large (byte count overflows)");
    KUMIKO_USER_CHECK(bytes == t.end - t.begin, where, ": data_offsets [", t.begin, ", ", t.end,
                      "] hold ", t.end - t.begin, " bytes but shape ", shape_str(t.shape), " of ",
                      t.dtype, " needs ", bytes);
    tensors.push_back(std::move(t));
  }
  std::sort(tensors.begin(), tensors.end(), [](const TensorInfo& a, const TensorInfo& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  for (size_t i = 1; i < tensors.size(); ++i) {
    const TensorInfo &a = tensors[i - 1], &b = tensors[i];
    KUMIKO_USER_CHECK(b.begin >= a.end, what, ": tensors ", in_quotes(a.name), " [", a.begin, ", ",
                      a.end, ") and ", in_quotes(b.name), " [", b.begin, ", ", b.end, ") overlap");
  }
  return tensors;
}

File::File(const std::string& path) : path_(path) {
  std::error_code ec;
  KUMIKO_USER_CHECK(fs::is_regular_file(path, ec), path, ": no such file");
  const uint64_t size = fs::file_size(path, ec);
  KUMIKO_USER_CHECK(!ec, path, ": cannot read the file size (", ec.message(), ")");
  KUMIKO_USER_CHECK(
      size >= 8, path, ": the file is ", size,
      " bytes, too short for a safetensors file (an 8-byte header length comes first)");
  std::ifstream in(path, std::ios::binary);
  KUMIKO_USER_CHECK(in, path, ": cannot open the file");
  unsigned char len_bytes[8];
  in.read(reinterpret_cast<char*>(len_bytes), 8);
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | len_bytes[i];
  KUMIKO_USER_CHECK(in, path, ": cannot read the header length");
  KUMIKO_USER_CHECK(header_len <= kMaxHeaderBytes, path, ": header length ", header_len,
                    " is over the 100 MB limit (not a safetensors file?)");
  KUMIKO_USER_CHECK(header_len <= size - 8, path, ": header length ", header_len,
                    " runs past the end of the file (", size, " bytes)");
  std::string header(header_len, '\0');
  in.read(header.data(), static_cast<std::streamsize>(header_len));
  KUMIKO_USER_CHECK(in, path, ": the file ends inside the header (truncated while reading?)");
  data_start_ = 8 + header_len;
  tensors_ = parse_header(header, size - data_start_, path, &metadata_);
  for (size_t i = 0; i < tensors_.size(); ++i) by_name_[tensors_[i].name] = i;
}

const TensorInfo* File::find(const std::string& name) const {
  const auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &tensors_[it->second];
}

std::vector<float> File::read_f32(const std::string& name,
                                  const std::vector<int64_t>& expected_shape) const {
  const TensorInfo* t = find(name);
  KUMIKO_USER_CHECK(t, path_, ": no tensor ", in_quotes(name));
  KUMIKO_USER_CHECK(expected_shape.empty() || expected_shape == t->shape, path_, ": tensor ",
                    in_quotes(name), " has shape ", shape_str(t->shape), ", expected ",
                    shape_str(expected_shape));
  const bool is_float =
      t->dtype == "F32" || t->dtype == "F16" || t->dtype == "BF16" || t->dtype == "F64";
  KUMIKO_USER_CHECK(is_float, path_, ": tensor ", in_quotes(name), " is ", t->dtype,
                    ", expected a float dtype (F32, F16, BF16 or F64)");
  const uint64_t bytes = t->end - t->begin;
  const size_t n = bytes / (t->dtype == "F64" ? 8 : t->dtype == "F32" ? 4 : 2);
  std::vector<unsigned char> raw(bytes);
  std::ifstream in(path_, std::ios::binary);
  in.seekg(static_cast<std::streamoff>(data_start_ + t->begin));
  in.read(reinterpret_cast<char*>(raw.data()), static_cast<std::streamsize>(bytes));
  KUMIKO_USER_CHECK(in && static_cast<uint64_t>(in.gcount()) == bytes, path_, ": tensor ",
                    in_quotes(name), ": cannot read its ", bytes,
                    " bytes (file changed or truncated?)");
  std::vector<float> out(n);
  if (t->dtype == "F32") {
    if (n) std::memcpy(out.data(), raw.data(), bytes);
  } else if (t->dtype == "F64") {
    for (size_t i = 0; i < n; ++i) {
      double v;
      std::memcpy(&v, raw.data() + 8 * i, 8);
      out[i] = static_cast<float>(v);
    }
  } else {
    const bool bf16 = t->dtype == "BF16";
    for (size_t i = 0; i < n; ++i) {
      const uint16_t h = static_cast<uint16_t>(raw[2 * i] | (raw[2 * i + 1] << 8));
      out[i] = bf16 ? std::bit_cast<float>(static_cast<uint32_t>(h) << 16) : half_to_float(h);
    }
  }
  return out;
}

Folder::Folder(const std::string& dir) : dir_(dir) {
  const fs::path single = fs::path(dir) / kSingleName, index = fs::path(dir) / kIndexName;
  if (fs::is_regular_file(single)) {  // transformers prefers the single file too
    files_.emplace_back(single.string());
    for (const auto& t : files_[0].tensors()) where_[t.name] = 0;
    return;
  }
  KUMIKO_USER_CHECK(fs::is_regular_file(index), dir, ": neither ", kSingleName, " nor ", kIndexName,
                    " is there");
  std::ifstream in(index, std::ios::binary);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const json j = parse_json(text, index.string(), "the index");
  KUMIKO_USER_CHECK(j.is_object() && j.contains("weight_map") && j["weight_map"].is_object(),
                    index.string(), ": expected an object with a \"weight_map\" object");
  std::map<std::string, size_t> shard_of_file;
  for (const auto& [name, file] : j["weight_map"].items()) {
    const std::string where = index.string() + ": tensor " + in_quotes(name);
    KUMIKO_USER_CHECK(file.is_string(), where, ": shard is ", brief(file),
                      ", expected a file name");
    const std::string shard = file.get<std::string>();
    KUMIKO_USER_CHECK(
        !shard.empty() && shard.find('/') == std::string::npos && shard != "." && shard != "..",
        where, ": shard ", in_quotes(shard), " is not a file name in the folder");
    auto it = shard_of_file.find(shard);
    if (it == shard_of_file.end()) {
      const fs::path p = fs::path(dir) / shard;
      KUMIKO_USER_CHECK(fs::is_regular_file(p), where, ": its shard ", p.string(),
                        " does not exist");
      files_.emplace_back(p.string());
      it = shard_of_file.emplace(shard, files_.size() - 1).first;
    }
    KUMIKO_USER_CHECK(files_[it->second].find(name), where, ": not in its shard ",
                      files_[it->second].path());
    where_[name] = it->second;
  }
}

std::vector<std::string> Folder::names() const {
  std::vector<std::string> out;
  for (const auto& [name, file] : where_) out.push_back(name);
  return out;
}

std::vector<float> Folder::read_f32(const std::string& name,
                                    const std::vector<int64_t>& expected_shape) const {
  const auto it = where_.find(name);
  KUMIKO_USER_CHECK(it != where_.end(), dir_, ": no tensor ", in_quotes(name));
  return files_[it->second].read_f32(name, expected_shape);
}

void write_file(const std::string& path, const std::vector<OutTensor>& tensors,
                const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::vector<std::pair<const void*, size_t>> parts(2);  // length, header, then each tensor
  std::set<std::string> names;
  uint64_t offset = 0;
  for (const auto& t : tensors) {
    uint64_t bytes = 0;
    const bool ok = std::all_of(t.shape.begin(), t.shape.end(), [](int64_t d) { return d >= 0; }) &&
                    byte_count(t.shape, 4, &bytes) && (bytes == 0 || t.data != nullptr);
    KUMIKO_CHECK(ok, path, ": tensor ", in_quotes(t.name), " has a bad shape ", shape_str(t.shape),
                 " or no data");
    KUMIKO_CHECK(t.name != "__metadata__" && names.insert(t.name).second, path, ": tensor name ",
                 in_quotes(t.name), " is repeated or reserved");
    header[t.name] = {
        {"dtype", "F32"}, {"shape", t.shape}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
    parts.emplace_back(t.data, bytes);
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const nlohmann::ordered_json::type_error& e) {
    KUMIKO_CHECK(false, path, ": tensor names and metadata must be UTF-8 (", e.what(), ")");
  }
  text.append((8 - text.size() % 8) % 8, ' ');  // data starts 8-byte aligned
  unsigned char len_bytes[8];
  for (int i = 0; i < 8; ++i) len_bytes[i] = static_cast<unsigned char>(text.size() >> (8 * i));
  parts[0] = {len_bytes, 8};
  parts[1] = {text.data(), text.size()};
  write_atomically(path, parts);
}

std::vector<std::string> write_folder(const std::string& dir, const std::vector<OutTensor>& tensors,
                                      uint64_t max_shard_bytes,
                                      const std::map<std::string, std::string>& metadata) {
  fs::create_directories(dir);
  std::vector<std::vector<OutTensor>> shards(1);
  uint64_t total = 0, current = 0;
  for (const auto& t : tensors) {
    uint64_t bytes = 0;
    KUMIKO_CHECK(byte_count(t.shape, 4, &bytes), dir, ": tensor ", in_quotes(t.name),
                 " is too large");
    if (!shards.back().empty() && current + bytes > max_shard_bytes) {
      shards.emplace_back();
      current = 0;
    }
    shards.back().push_back(t);
    current += bytes;
    total += bytes;
  }
  std::vector<std::string> written;
  std::set<std::string> written_names;
  if (total <= max_shard_bytes) shards = {tensors};
  json weight_map = json::object();
  for (size_t s = 0; s < shards.size(); ++s) {
    char name[64];
    std::snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", s + 1, shards.size());
    const std::string file = shards.size() == 1 ? kSingleName : name;
    write_file((fs::path(dir) / file).string(), shards[s], metadata);
    written.push_back((fs::path(dir) / file).string());
    written_names.insert(file);
    for (const auto& t : shards[s]) weight_map[t.name] = file;
  }
  if (shards.size() > 1) {
    const json index = {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
    const std::string text = index.dump(2) + "\n";
    written.push_back((fs::path(dir) / kIndexName).string());
    written_names.insert(kIndexName);
    write_atomically(written.back(), {{text.data(), text.size()}});
  }
  // Leftovers of an earlier export in another layout would shadow or contradict this one.
  std::vector<fs::path> stale;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string f = e.path().filename().string();
    if (e.is_regular_file() && is_weights_file(f) && !written_names.count(f))
      stale.push_back(e.path());
  }
  for (const auto& p : stale) fs::remove(p);
  return written;
}

}  // namespace kumiko::ckpt::safetensors
