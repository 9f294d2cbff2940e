// safetensors (src/ckpt/safetensors.cpp): write -> read is bitwise (scalars and empty
// tensors included); F16/BF16/F64 convert to float32 exactly / rounded to nearest; a
// file written by the Python package reads back; sharded folders are laid out as
// transformers writes them; every malformed header or file is a one-line UserError
// naming the file and tensor; and seeded fuzzing of the header parser and the file
// reader produces either a header satisfying every invariant or a UserError.
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "kumiko/ckpt/safetensors.h"
#include "kumiko/core/error.h"

namespace kumiko::ckpt::safetensors {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

std::string le64(uint64_t v) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>(v >> (8 * i));
  return s;
}

template <typename T>
std::string bytes_of(const std::vector<T>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
}

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

bool same_bits(const std::vector<float>& a, const float* b, size_t n) {
  return a.size() == n && (n == 0 || std::memcmp(a.data(), b, n * sizeof(float)) == 0);
}

// Runs f, which must throw a one-line UserError containing every part.
void expect_user_error(const std::function<void()>& f, const std::vector<std::string>& parts) {
  try {
    f();
    ADD_FAILURE() << "no error; expected one with '" << parts.front() << "'";
  } catch (const UserError& e) {
    const std::string msg = e.what();
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
    for (const auto& p : parts)
      EXPECT_NE(msg.find(p), std::string::npos) << "'" << p << "' not in: " << msg;
  }
}

// Every property parse_header promises of a header it accepts.
void expect_invariants(const std::vector<TensorInfo>& ts, uint64_t data_bytes) {
  for (size_t i = 0; i < ts.size(); ++i) {
    const TensorInfo& t = ts[i];
    ASSERT_GT(dtype_size(t.dtype), 0) << t.dtype;
    ASSERT_LE(t.begin, t.end);
    ASSERT_LE(t.end, data_bytes);
    long double bytes =
        dtype_size(t.dtype);  // no overflow: the product is bounded by data_bytes if right
    for (const int64_t d : t.shape) {
      ASSERT_GE(d, 0);
      bytes *= static_cast<long double>(d);
    }
    ASSERT_EQ(bytes, static_cast<long double>(t.end - t.begin)) << t.name;
    if (i > 0) {
      ASSERT_LE(ts[i - 1].begin, t.begin);
      ASSERT_LE(ts[i - 1].end, t.begin) << ts[i - 1].name << " overlaps " << t.name;
    }
  }
}

class SafetensorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::temp_directory_path() / ("kumiko-test-safetensors-" + std::to_string(::getpid()));
    fs::remove_all(root_);
    fs::create_directories(root_);
  }
  void TearDown() override { fs::remove_all(root_); }

  // A file holding exactly length(header) + header + data.
  std::string raw_file(const std::string& name, const std::string& header,
                       const std::string& data) {
    const std::string path = (root_ / name).string();
    std::ofstream(path, std::ios::binary) << le64(header.size()) << header << data;
    return path;
  }

  fs::path root_;
};

TEST_F(SafetensorsTest, RoundTripIsBitwise) {
  std::mt19937 rng(1234);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  const std::vector<std::vector<int64_t>> shapes = {{3, 5},    {7}, {}, {4, 0, 3},
                                                    {2, 3, 4}, {1}, {0}};
  std::vector<std::vector<float>> values;
  std::vector<OutTensor> out;
  for (size_t i = 0; i < shapes.size(); ++i) {
    int64_t n = 1;
    for (const int64_t d : shapes[i]) n *= d;
    values.emplace_back(n);
    for (auto& v : values.back()) v = normal(rng);
  }
  for (size_t i = 0; i < shapes.size(); ++i)
    out.push_back({std::string("t").append(std::to_string(i)).append(".weight"), shapes[i],
                   values[i].data()});
  const std::string path = (root_ / "model.safetensors").string();
  const std::map<std::string, std::string> meta = {{"format", "pt"}, {"note", "kumiko \"test\""}};
  write_file(path, out, meta);

  const std::string bytes = slurp(path);
  uint64_t header_len = 0;
  std::memcpy(&header_len, bytes.data(), 8);
  EXPECT_EQ(header_len % 8, 0u);
  EXPECT_TRUE(bytes[8 + header_len - 1] == ' ' || bytes[8 + header_len - 1] == '}');
  File f(path);
  EXPECT_EQ(f.metadata(), meta);
  EXPECT_EQ(f.path(), path);
  ASSERT_EQ(f.tensors().size(), shapes.size());
  uint64_t offset = 0;
  for (size_t i = 0; i < shapes.size(); ++i) {  // in the given order, contiguous from 0
    const TensorInfo& t = f.tensors()[i];
    EXPECT_EQ(t.name, out[i].name);
    EXPECT_EQ(t.dtype, "F32");
    EXPECT_EQ(t.shape, shapes[i]);
    EXPECT_EQ(t.begin, offset);
    offset = t.end;
    EXPECT_TRUE(same_bits(f.read_f32(t.name), values[i].data(), values[i].size())) << t.name;
    if (!shapes[i].empty()) {
      EXPECT_TRUE(same_bits(f.read_f32(t.name, shapes[i]), values[i].data(), values[i].size()));
    }
  }
  EXPECT_EQ(bytes.size(), 8 + header_len + offset);
  EXPECT_EQ(f.find("absent"), nullptr);
  ASSERT_NE(f.find("t2.weight"), nullptr);
  EXPECT_EQ(f.find("t2.weight")->shape, std::vector<int64_t>{});
  EXPECT_FALSE(fs::exists(path + ".tmp"));
}

TEST_F(SafetensorsTest, ConvertsHalfBfloatAndDouble) {
  const std::vector<uint16_t> bf16 = {0x3F80, 0xC040, 0x7F80, 0xFF80, 0x7FC0, 0x0001, 0x8000};
  const std::vector<uint16_t> f16 = {0x3C00, 0x0001, 0x8001, 0x03FF, 0x0400, 0x7BFF,
                                     0x7C00, 0xFC00, 0x7E00, 0x8000, 0xC000, 0x3555};
  const double one_ulp_half = std::ldexp(1.0, -24);  // half a float ulp at 1
  const std::vector<double> f64 = {
      1.0, 0.1, 1e300, -1e-300, std::nan(""), 1.0 + one_ulp_half, 1.0 + 3 * one_ulp_half, -7.25};
  const std::vector<int64_t> i64 = {1, 2};
  std::string data = bytes_of(bf16) + bytes_of(f16) + bytes_of(f64) + bytes_of(i64);
  const json header = {{"b", {{"dtype", "BF16"}, {"shape", {7}}, {"data_offsets", {0, 14}}}},
                       {"h", {{"dtype", "F16"}, {"shape", {3, 4}}, {"data_offsets", {14, 38}}}},
                       {"d", {{"dtype", "F64"}, {"shape", {8}}, {"data_offsets", {38, 102}}}},
                       {"i", {{"dtype", "I64"}, {"shape", {2}}, {"data_offsets", {102, 118}}}}};
  const File f(raw_file("conv.safetensors", header.dump() + "   ", data));

  const auto b = f.read_f32("b");
  EXPECT_EQ(b[0], 1.0f);
  EXPECT_EQ(b[1], -3.0f);
  EXPECT_EQ(b[2], std::numeric_limits<float>::infinity());
  EXPECT_EQ(b[3], -std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(b[4]));
  EXPECT_EQ(b[5], std::bit_cast<float>(uint32_t{0x00010000}));  // a float subnormal, 2^-133
  EXPECT_TRUE(b[6] == 0.0f && std::signbit(b[6]));

  const auto h = f.read_f32("h", {3, 4});
  EXPECT_EQ(h[0], 1.0f);
  EXPECT_EQ(h[1], std::ldexp(1.0f, -24));  // smallest subnormal
  EXPECT_EQ(h[2], -std::ldexp(1.0f, -24));
  EXPECT_EQ(h[3], 1023 * std::ldexp(1.0f, -24));  // largest subnormal
  EXPECT_EQ(h[4], std::ldexp(1.0f, -14));         // smallest normal
  EXPECT_EQ(h[5], 65504.0f);
  EXPECT_EQ(h[6], std::numeric_limits<float>::infinity());
  EXPECT_EQ(h[7], -std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(h[8]));
  EXPECT_TRUE(h[9] == 0.0f && std::signbit(h[9]));
  EXPECT_EQ(h[10], -2.0f);
  EXPECT_EQ(h[11], 0x555 * std::ldexp(1.0f, -12));  // 0.333251953125

  const auto d = f.read_f32("d");
  EXPECT_EQ(d[0], 1.0f);
  EXPECT_EQ(d[1], 0.1f);
  EXPECT_EQ(d[2], std::numeric_limits<float>::infinity());
  EXPECT_TRUE(d[3] == 0.0f && std::signbit(d[3]));
  EXPECT_TRUE(std::isnan(d[4]));
  EXPECT_EQ(d[5], 1.0f);                          // a tie rounds to even
  EXPECT_EQ(d[6], 1.0f + std::ldexp(1.0f, -22));  // a tie rounds to even
  EXPECT_EQ(d[7], -7.25f);

  expect_user_error([&] { f.read_f32("i"); },
                    {"conv.safetensors", "'i'", "I64", "F32, F16, BF16 or F64"});
}

// data/python_written.safetensors (280 bytes) comes from safetensors 0.8.0 + numpy:
//   import numpy as np
//   from safetensors import TensorSpec, serialize_file
//   a = np.array([[1.5, -2.0, 0.25], [3.0, 1e-3, -0.0]], dtype="<f4")  # F32 [2, 3]
//   h = np.array([1.0, -0.5, 65504.0, 2.0**-24], dtype="<f2")           # F16 [4], the last
//   subnormal b = np.array([0x3F80, 0xC040, 0x7F80, 0x3E20], dtype="<u2")         # BF16 [2, 2]: 1,
//   -3, inf, 0.15625 spec = lambda dt, x, shape: TensorSpec(dtype=dt, shape=shape,
//   data_ptr=x.ctypes.data, data_len=x.nbytes) serialize_file({"layer.weight": spec("float32", a,
//   [2, 3]), "layer.bias": spec("float16", h, [4]),
//                   "embed": spec("bfloat16", b, [2, 2])}, "python_written.safetensors",
//                   metadata={"format": "pt"})
TEST_F(SafetensorsTest, ReadsFileWrittenByPythonPackage) {
  const File f(std::string(KUMIKO_SOURCE_DIR) +
               "/tests/unit/safetensors/data/python_written.safetensors");
  EXPECT_EQ(f.metadata(), (std::map<std::string, std::string>{{"format", "pt"}}));
  ASSERT_EQ(f.tensors().size(), 3u);
  EXPECT_EQ(f.tensors()[0].name, "layer.weight");  // the package orders by alignment, then name
  EXPECT_EQ(f.tensors()[1].dtype, "BF16");
  EXPECT_EQ(f.tensors()[2].dtype, "F16");
  EXPECT_EQ(f.read_f32("layer.weight", {2, 3}),
            (std::vector<float>{1.5f, -2.0f, 0.25f, 3.0f, 1e-3f, -0.0f}));
  EXPECT_EQ(f.read_f32("layer.bias", {4}),
            (std::vector<float>{1.0f, -0.5f, 65504.0f, std::ldexp(1.0f, -24)}));
  EXPECT_EQ(f.read_f32("embed", {2, 2}),
            (std::vector<float>{1.0f, -3.0f, std::numeric_limits<float>::infinity(), 0.15625f}));
}

TEST_F(SafetensorsTest, ShardedFolderAsTransformersWritesIt) {
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> uni(-1.0f, 1.0f);
  std::vector<std::vector<float>> values(6, std::vector<float>(10));  // 40 bytes each
  values[4].resize(40);  // 160 bytes: over the limit, alone
  for (auto& v : values)
    for (auto& x : v) x = uni(rng);
  std::vector<OutTensor> out;
  for (size_t i = 0; i < values.size(); ++i)
    out.push_back({std::string("layer").append(std::to_string(5 - i)),
                   {static_cast<int64_t>(values[i].size())},
                   values[i].data()});
  const fs::path dir = root_ / "hf";
  // 40+40 | 40+40 | 160 (over the limit: alone) | 40 -> 4 shards
  const auto files = write_folder(dir.string(), out, 100);
  const std::vector<std::string> shard_names = {
      "model-00001-of-00004.safetensors", "model-00002-of-00004.safetensors",
      "model-00003-of-00004.safetensors", "model-00004-of-00004.safetensors"};
  ASSERT_EQ(files.size(), 5u);
  for (size_t s = 0; s < 4; ++s) EXPECT_EQ(files[s], (dir / shard_names[s]).string());
  EXPECT_EQ(files[4], (dir / "model.safetensors.index.json").string());
  const json index = json::parse(slurp(dir / "model.safetensors.index.json"));
  EXPECT_EQ(index["metadata"]["total_size"], 5 * 40 + 160);
  const std::vector<size_t> shard_of = {0, 0, 1, 1, 2, 3};
  ASSERT_EQ(index["weight_map"].size(), out.size());
  for (size_t i = 0; i < out.size(); ++i) {
    EXPECT_EQ(index["weight_map"][out[i].name], shard_names[shard_of[i]]) << out[i].name;
    EXPECT_NE(File((dir / shard_names[shard_of[i]]).string()).find(out[i].name), nullptr);
  }
  EXPECT_EQ(File(files[0]).metadata(), (std::map<std::string, std::string>{{"format", "pt"}}));

  const Folder folder(dir.string());
  EXPECT_EQ(folder.names(),
            (std::vector<std::string>{"layer0", "layer1", "layer2", "layer3", "layer4", "layer5"}));
  EXPECT_FALSE(folder.has("layer6"));
  for (size_t i = 0; i < out.size(); ++i) {
    EXPECT_TRUE(folder.has(out[i].name));
    EXPECT_TRUE(
        same_bits(folder.read_f32(out[i].name, out[i].shape), values[i].data(), values[i].size()));
  }
  expect_user_error([&] { folder.read_f32("layer6"); }, {dir.string(), "'layer6'"});
  expect_user_error(
      [&] {
        folder.read_f32("layer0", {2, 5});
      },
      {"model-00004-of-00004", "'layer0'", "[10]", "[2, 5]"});

  // Re-exported as one file: the old shards and index are removed, so nothing stale is read.
  const auto single = write_folder(dir.string(), out, 1000);
  ASSERT_EQ(single, std::vector<std::string>{(dir / "model.safetensors").string()});
  EXPECT_FALSE(fs::exists(dir / "model.safetensors.index.json"));
  EXPECT_FALSE(fs::exists(dir / shard_names[0]));
  EXPECT_TRUE(
      same_bits(Folder(dir.string()).read_f32("layer1"), values[4].data(), values[4].size()));
}

TEST_F(SafetensorsTest, HeaderErrorsNameFileAndTensor) {
  const std::string ok_offsets = R"("data_offsets":[0,8])";
  struct Case {
    std::string header;
    std::vector<std::string> parts;
  };
  const std::vector<Case> cases = {
      {"not json", {"header is not valid JSON"}},
      {R"({"w":{"dtype":"F32","shape":[1e500],"data_offsets":[0,8]}})",
       {"header is not valid JSON"}},
      {"[1, 2]", {"header is a JSON array, expected an object"}},
      {R"({"w": 5})", {"'w'", "entry is 5, expected an object"}},
      {R"({"w":{"shape":[2],"data_offsets":[0,8]}})", {"'w'", "\"dtype\" is missing"}},
      {R"({"w":{"dtype":"F32","data_offsets":[0,8]}})", {"'w'", "\"shape\" is missing"}},
      {R"({"w":{"dtype":"F32","shape":[2]}})", {"'w'", "\"data_offsets\" is missing"}},
      {R"({"w":{"dtype":32,"shape":[2],"data_offsets":[0,8]}})", {"'w'", "dtype is 32"}},
      {R"({"w":{"dtype":"Q8","shape":[2],"data_offsets":[0,8]}})", {"'w'", "unknown dtype 'Q8'"}},
      {R"({"w":{"dtype":"F32","shape":"2","data_offsets":[0,8]}})", {"'w'", "shape is \"2\""}},
      {R"({"w":{"dtype":"F32","shape":[2,-1],"data_offsets":[0,8]}})", {"'w'", "has -1"}},
      {R"({"w":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}})", {"'w'", "has 2.0"}},
      {R"({"w":{"dtype":"F32","shape":[9223372036854775808],"data_offsets":[0,8]}})",
       {"'w'", "non-negative"}},
      {R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[8]}})", {"'w'", "data_offsets is [8]"}},
      {R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[-8,0]}})", {"'w'", "[begin, end]"}},
      {R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,"8"]}})", {"'w'", "[begin, end]"}},
      {R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})",
       {"'w'", "[8, 0] end before begin"}},
      {R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})",
       {"'w'", "end 16 is past", "12-byte"}},
      {R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})",
       {"'w'", "hold 8 bytes", "[3] of F32 needs 12"}},
      {R"({"w":{"dtype":"F64","shape":[4294967296,4294967296],"data_offsets":[0,8]}})",
       {"'w'", "overflows"}},
      {R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"v":{"dtype":"F32","shape":[2],)"
       R"("data_offsets":[4,12]}})",
       {"'v' [4, 12)", "'w' [0, 8)", "overlap"}},
      {R"({"__metadata__":{"a":1},"w":{"dtype":"F32","shape":[2],)" + ok_offsets + "}}",
       {"__metadata__ key 'a' is 1"}},
      {R"({"__metadata__":[],"w":{"dtype":"F32","shape":[2],)" + ok_offsets + "}}",
       {"__metadata__ is a JSON array"}},
      {R"({"w\nx":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", {"'w\\x0ax'"}},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.header);
    auto parts = c.parts;
    parts.push_back("f.safetensors: ");
    expect_user_error([&] { parse_header(c.header, 12, "f.safetensors"); }, parts);
  }
  // Accepted: padding, a scalar, an empty tensor, gaps and unused bytes, unknown extra keys.
  std::map<std::string, std::string> meta;
  const auto ts = parse_header(
      R"({"__metadata__":{"k":"v"},"s":{"dtype":"I32","shape":[],"data_offsets":[8,12],"x":1},)"
      R"("e":{"dtype":"BF16","shape":[0,5],"data_offsets":[8,8]},"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}})"
      "        ",
      16, "f", &meta);
  ASSERT_EQ(ts.size(), 3u);
  EXPECT_EQ(ts[0].name, "a");
  EXPECT_EQ(ts[1].name, "e");
  EXPECT_EQ(ts[2].name, "s");
  EXPECT_EQ(meta, (std::map<std::string, std::string>{{"k", "v"}}));
}

TEST_F(SafetensorsTest, FileAndFolderErrors) {
  const std::string missing = (root_ / "missing.safetensors").string();
  expect_user_error([&] { File{missing}; }, {missing, "no such file"});
  const std::string tiny = (root_ / "tiny.safetensors").string();
  std::ofstream(tiny, std::ios::binary) << "abcde";
  expect_user_error([&] { File{tiny}; }, {tiny, "5 bytes, too short"});
  const std::string header = R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  const std::string past = raw_file("past.safetensors", header, std::string(8, '\0'));
  fs::resize_file(past, 8 + header.size() - 1);
  const std::string len = std::to_string(header.size()),
                    size = std::to_string(8 + header.size() - 1);
  expect_user_error([&] { File{past}; },
                    {past, "header length " + len + " runs past the end of the file (" + size});
  const std::string huge = (root_ / "huge.safetensors").string();
  std::ofstream(huge, std::ios::binary) << le64(uint64_t{1} << 40) << header;
  expect_user_error([&] { File{huge}; }, {huge, "over the 100 MB limit"});
  const std::string bad_data = raw_file("short_data.safetensors", header, std::string(4, '\0'));
  expect_user_error([&] { File{bad_data}; },
                    {bad_data, "'w'", "past the end of the 4-byte data buffer"});

  const File ok(raw_file("ok.safetensors", header, std::string(8, '\0')));
  expect_user_error([&] { ok.read_f32("v"); }, {ok.path(), "no tensor 'v'"});
  expect_user_error(
      [&] {
        ok.read_f32("w", {1, 2});
      },
      {ok.path(), "'w' has shape [2], expected [1, 2]"});

  const fs::path dir = root_ / "folder";
  fs::create_directories(dir);
  expect_user_error([&] { Folder{dir.string()}; }, {dir.string(), "neither model.safetensors nor"});
  const std::string index = (dir / "model.safetensors.index.json").string();
  const auto write_index = [&](const std::string& text) {
    std::ofstream(index, std::ios::binary) << text;
  };
  write_index("{\"weight_map\": ");
  expect_user_error([&] { Folder{dir.string()}; }, {index, "not valid JSON"});
  write_index(R"({"metadata": {}})");
  expect_user_error([&] { Folder{dir.string()}; }, {index, "\"weight_map\""});
  write_index(R"({"weight_map": {"w": "model-00001-of-00002.safetensors"}})");
  expect_user_error([&] { Folder{dir.string()}; },
                    {index, "'w'", "model-00001-of-00002.safetensors does not exist"});
  write_index(R"({"weight_map": {"w": "../ok.safetensors"}})");
  expect_user_error([&] { Folder{dir.string()}; }, {index, "'w'", "not a file name in the folder"});
  fs::copy_file(ok.path(), dir / "model-00001-of-00002.safetensors");
  write_index(
      R"({"weight_map": {"w": "model-00001-of-00002.safetensors", "v": "model-00001-of-00002.safetensors"}})");
  expect_user_error([&] { Folder{dir.string()}; },
                    {index, "'v'", "not in its shard", "model-00001-of-00002"});
  write_index(R"({"weight_map": {"w": "model-00001-of-00002.safetensors"}})");
  EXPECT_EQ(Folder(dir.string()).names(), std::vector<std::string>{"w"});
}

// A random JSON value, nested up to `depth`.
json random_json(std::mt19937_64& rng, int depth) {
  static const json atoms = json::parse(
      R"([null, true, -1, 0, 1, 8, 12, 1e300, 2.5, "F32", "BF16", "", "x", [], {}, 9223372036854775808,
          -4611686018427387904])");
  const int kind = static_cast<int>(rng() % (depth > 0 ? 4 : 2));
  if (kind == 0) return atoms[rng() % atoms.size()];
  if (kind == 1) return static_cast<uint64_t>(rng() >> (rng() % 64));
  json j = kind == 2 ? json::array() : json::object();
  const std::vector<std::string> keys = {"dtype",        "shape", "data_offsets",
                                         "__metadata__", "w",     "v"};
  for (int n = static_cast<int>(rng() % 4); n > 0; --n) {
    if (kind == 2)
      j.push_back(random_json(rng, depth - 1));
    else
      j[keys[rng() % keys.size()]] = random_json(rng, depth - 1);
  }
  return j;
}

// A mutation of `base`: byte changes, truncation, a random number, or a random value
// planted somewhere in its JSON tree.
std::string mutate(const std::string& base, std::mt19937_64& rng) {
  std::string s = base;
  switch (rng() % 6) {
    case 0:
      for (int n = 1 + static_cast<int>(rng() % 3); n > 0 && !s.empty(); --n)
        s[rng() % s.size()] = static_cast<char>(rng());
      return s;
    case 1:
      return s.substr(0, rng() % (s.size() + 1));
    case 2: {  // a number replaced by a random one
      const std::vector<std::string> numbers = {"0",
                                                "-1",
                                                "7",
                                                "12",
                                                "4294967296",
                                                "18446744073709551615",
                                                "18446744073709551616",
                                                "1e400",
                                                "3.5",
                                                "-0",
                                                "9223372036854775807"};
      size_t pos = s.find_first_of("0123456789", rng() % s.size());
      if (pos == std::string::npos) return s;
      const size_t end = s.find_first_not_of("0123456789", pos);
      return s.replace(pos, end - pos,
                       rng() % 2 ? numbers[rng() % numbers.size()] : std::to_string(rng() % 1000));
    }
    case 3: {
      const std::string junk = "{}[],:\"0123456789-eE. \\ntrue";
      for (int n = 1 + static_cast<int>(rng() % 3); n > 0; --n)
        s.insert(rng() % (s.size() + 1), 1, junk[rng() % junk.size()]);
      return s;
    }
    case 4:
      return random_json(rng, 4).dump();
    default: {  // a random value at a random place in the tree
      json j = json::parse(base);
      json* node = &j;
      while (node->is_structured() && !node->empty() && rng() % 3 != 0) {
        auto it = node->begin();
        std::advance(it, static_cast<long>(rng() % node->size()));
        node = &*it;
      }
      *node = random_json(rng, 2);
      return j.dump();
    }
  }
}

TEST_F(SafetensorsTest, FuzzedHeadersParseOrFailCleanly) {
  const std::string base =
      R"({"__metadata__":{"format":"pt"},"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},)"
      R"("b":{"dtype":"BF16","shape":[4],"data_offsets":[24,32]},"s":{"dtype":"F64","shape":[],"data_offsets":[32,40]}})";
  ASSERT_EQ(parse_header(base, 40, "fuzz").size(), 3u);
  std::mt19937_64 rng(20240601);
  int accepted = 0, rejected = 0;
  for (int iter = 0; iter < 4000; ++iter) {
    const std::string text = mutate(base, rng);
    const uint64_t data_bytes = rng() % 4 == 0 ? rng() % 48 : 40;
    try {
      const auto ts = parse_header(text, data_bytes, "fuzz");
      expect_invariants(ts, data_bytes);
      ++accepted;
    } catch (const UserError& e) {
      const std::string msg = e.what();
      EXPECT_EQ(msg.rfind("fuzz: ", 0), 0u) << msg;
      EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
      ++rejected;
    } catch (const std::exception& e) {
      ADD_FAILURE() << "not a UserError: " << e.what() << " for header " << text;
    }
    if (::testing::Test::HasFailure()) break;
  }
  EXPECT_GT(accepted, 50);  // the fuzz reaches both outcomes
  EXPECT_GT(rejected, 1000);
}

TEST_F(SafetensorsTest, FuzzedFilesReadOrFailCleanly) {
  std::vector<float> a(6, 1.5f), b(3, -2.0f);
  const std::string good = (root_ / "good.safetensors").string();
  write_file(good, {{"a", {2, 3}, a.data()}, {"b", {3}, b.data()}});
  const std::string bytes = slurp(good);
  std::mt19937_64 rng(99);
  const std::string path = (root_ / "fuzz.safetensors").string();
  for (int iter = 0; iter < 300; ++iter) {
    std::string s = bytes;
    switch (rng() % 3) {
      case 0:
        s = s.substr(0, rng() % s.size());
        break;
      case 1:
        for (int n = 1 + static_cast<int>(rng() % 4); n > 0; --n)
          s[rng() % s.size()] = static_cast<char>(rng());
        break;
      default:
        s = le64(rng() % 2 ? rng() : rng() % (s.size() + 16)) + s.substr(8);
    }
    std::ofstream(path, std::ios::binary | std::ios::trunc) << s;
    try {
      const File f(path);
      uint64_t header_len = 0;
      std::memcpy(&header_len, s.data(), 8);
      expect_invariants(f.tensors(), s.size() - 8 - header_len);
      for (const auto& t : f.tensors()) {
        try {
          f.read_f32(t.name);
        } catch (const UserError&) {  // a dtype that is not a float
        }
      }
    } catch (const UserError& e) {
      EXPECT_EQ(std::string(e.what()).rfind(path, 0), 0u) << e.what();
    } catch (const std::exception& e) {
      ADD_FAILURE() << "not a UserError: " << e.what();
    }
    if (::testing::Test::HasFailure()) break;
  }
}

}  // namespace
}  // namespace kumiko::ckpt::safetensors
