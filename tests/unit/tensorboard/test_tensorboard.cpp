#include "kumiko/core/tensorboard.h"

#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "kumiko/core/error.h"

namespace kumiko::tensorboard {
namespace {

namespace fs = std::filesystem;

// A fresh folder under the system temp dir, removed at scope exit.
class ScratchDir {
 public:
  explicit ScratchDir(const std::string& name)
      : path_(fs::temp_directory_path() /
              ("kumiko_tensorboard_" + name + "_" + std::to_string(::getpid()))) {
    fs::remove_all(path_);
  }
  ~ScratchDir() { fs::remove_all(path_); }
  [[nodiscard]] std::string str() const { return path_.string(); }

 private:
  fs::path path_;
};

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// The bytes with the given values, e.g. bytes_of({0x0a, 0x01, 'a'}).
std::string bytes_of(std::initializer_list<int> values) {
  std::string out;
  for (int v : values) out.push_back(static_cast<char>(v));
  return out;
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
}

// Runs read_scalars and requires a UserError whose message names `path` and contains `part`.
void expect_read_error(const std::string& path, const std::string& part) {
  try {
    read_scalars(path);
    ADD_FAILURE() << "read_scalars('" << path << "') did not throw";
  } catch (const UserError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(path), std::string::npos) << msg;
    EXPECT_NE(msg.find(part), std::string::npos) << msg;
  }
}

TEST(Crc32c, KnownVectors) {
  EXPECT_EQ(crc32c("", 0), 0x00000000u);
  EXPECT_EQ(crc32c("123456789", 9), 0xE3069283u);  // the CRC-32C check value
  const std::string zeros(32, '\0');               // RFC 3720 B.4
  const std::string ones(32, '\xff');
  EXPECT_EQ(crc32c(zeros.data(), zeros.size()), 0x8A9136AAu);
  EXPECT_EQ(crc32c(ones.data(), ones.size()), 0x62A8AB43u);
  // ((0xE3069283 >> 15) | (0xE3069283 << 17)) + 0xa282ead8, mod 2^32.
  EXPECT_EQ(masked_crc32c("123456789", 9), 0xC78AB0E5u);
}

TEST(EventWriter, FileNameAndFirstRecord) {
  ScratchDir dir("name");
  EventWriter writer(dir.str() + "/nested/run");  // creates missing folders
  const std::string name = fs::path(writer.path()).filename().string();
  EXPECT_EQ(name.rfind("events.out.tfevents.", 0), 0u) << name;
  EXPECT_TRUE(name.ends_with(std::to_string(::getpid()) + ".kumiko")) << name;
  writer.flush();
  // {wall_time (9 bytes), step 0 (2), file_version "brain.Event:2" (2 + 13)}: 26 bytes.
  const std::string bytes = read_bytes(writer.path());
  ASSERT_EQ(bytes.size(), 12u + 26u + 4u);
  EXPECT_EQ(bytes.substr(0, 8), bytes_of({0x1a, 0, 0, 0, 0, 0, 0, 0}));
  EXPECT_EQ(bytes.substr(12 + 9, 17), bytes_of({0x10, 0x00, 0x1a, 0x0d}) + "brain.Event:2");
  EXPECT_TRUE(read_scalars(writer.path()).empty());
}

// One record byte for byte, computed by hand (CRCs from an independent bitwise CRC-32C),
// so that neither the framing nor the protobuf encoding can drift unnoticed.
TEST(EventWriter, ExactRecordBytes) {
  ScratchDir dir("exact");
  std::string path;
  {
    EventWriter writer(dir.str());
    writer.scalar("a", 3, 1.0, 1.5);
    path = writer.path();
  }
  const std::string bytes = read_bytes(path);
  const std::string event = bytes_of({
      0x09, 0,    0,   0,    0,    0, 0, 0xf8, 0x3f,  // field 1 fixed64: wall_time 1.5
      0x10, 0x03,                                     // field 2 varint: step 3
      0x2a, 0x0a,                                     // field 5 bytes (10): summary
      0x0a, 0x08,                                     //   field 1 bytes (8): value
      0x0a, 0x01, 'a',                                //     field 1 bytes (1): tag "a"
      0x15, 0,    0,   0x80, 0x3f,                    //     field 2 fixed32: simple_value 1.0f
  });
  const std::string expected = bytes_of({0x17, 0, 0, 0, 0, 0, 0, 0})  // length 23
                               + bytes_of({0xe7, 0xce, 0xf8, 0x1e})   // masked CRC 0x1ef8cee7
                               + event                                //
                               + bytes_of({0x59, 0x85, 0x99, 0x81});  // masked CRC 0x81998559
  ASSERT_EQ(bytes.size(), 42u + expected.size());
  EXPECT_EQ(bytes.substr(42), expected);
}

TEST(EventWriter, RoundTrip) {
  ScratchDir dir("roundtrip");
  constexpr double kInf = std::numeric_limits<double>::infinity();
  constexpr float kInfF = std::numeric_limits<float>::infinity();
  struct Row {
    std::string tag;
    int64_t step;
    double value;
    double wall_time;
    float expected;
  };
  const std::vector<Row> rows = {
      {"train/loss", 0, 10.25, 1700000000.125, 10.25f},
      {"train/lr", 0, 3e-4, 1700000000.125, 3e-4f},
      {"train/loss", 1, -2.5, 1700000001.5, -2.5f},
      {"eval/loss", 7, std::nan(""), 1700000002.0, std::nanf("")},
      {"eval/loss", 8, kInf, 1700000003.0, kInfF},
      {"eval/loss", 9, -kInf, 1700000004.0, -kInfF},
      {"big", int64_t{1} << 40, 1e300, 0.0, kInfF},  // beyond float's range
      {"tiny", -5, -1e-40, -1.0, -1e-40f},           // float denormal, negative step
      {std::string(300, 't'), 1, 0.0, 2.0, 0.0f},    // tag length needs a 2-byte varint
  };
  std::string path;
  {
    EventWriter writer(dir.str());
    for (const Row& r : rows) writer.scalar(r.tag, r.step, r.value, r.wall_time);
    path = writer.path();
  }
  const std::vector<ScalarEvent> got = read_scalars(path);
  ASSERT_EQ(got.size(), rows.size());
  for (size_t i = 0; i < rows.size(); ++i) {
    SCOPED_TRACE(rows[i].tag.substr(0, 20));
    EXPECT_EQ(got[i].tag, rows[i].tag);
    EXPECT_EQ(got[i].step, rows[i].step);
    EXPECT_EQ(got[i].wall_time, rows[i].wall_time);
    if (std::isnan(rows[i].expected)) {
      EXPECT_TRUE(std::isnan(got[i].value));
    } else {
      EXPECT_EQ(got[i].value, rows[i].expected);
    }
  }
  EXPECT_NE(got[7].value, 0.0f);  // the denormal was not flushed to zero
}

TEST(EventWriter, FlushMakesScalarsVisible) {
  ScratchDir dir("flush");
  EventWriter writer(dir.str());
  writer.scalar("loss", 1, 0.5, 1.0);
  writer.flush();  // the writer stays open, as during training
  const auto got = read_scalars(writer.path());
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].value, 0.5f);
}

// A run resumed in the same process and second opens a second file, never the first.
TEST(EventWriter, TwoWritersInOneFolderGetTwoFiles) {
  ScratchDir dir("two_writers");
  EventWriter a(dir.str());
  EventWriter b(dir.str());
  EXPECT_NE(a.path(), b.path());
  a.scalar("x", 1, 1.0);
  b.scalar("x", 2, 2.0);
  a.flush();
  b.flush();
  EXPECT_EQ(read_scalars(a.path()).at(0).step, 1);
  EXPECT_EQ(read_scalars(b.path()).at(0).step, 2);
}

TEST(EventWriter, UnwritableFolderNamesThePath) {
  ScratchDir dir("unwritable");
  fs::create_directories(dir.str());
  const std::string file = dir.str() + "/not_a_folder";
  write_bytes(file, "x");
  try {
    EventWriter writer(file);
    ADD_FAILURE() << "EventWriter accepted a regular file as its folder";
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find(file), std::string::npos) << e.what();
  }
}

class Corrupted : public ::testing::Test {
 protected:
  void SetUp() override {
    EventWriter writer(dir_.str());
    writer.scalar("a", 3, 1.0, 1.5);  // the 39-byte record at byte 42 (ExactRecordBytes)
    path_ = writer.path();
  }
  ScratchDir dir_{"corrupt"};
  std::string path_;
};

TEST_F(Corrupted, DataByte) {
  std::string bytes = read_bytes(path_);
  bytes[42 + 12 + 20] ^= 0x01;  // inside the simple_value
  write_bytes(path_, bytes);
  expect_read_error(path_, "record at byte 42: data CRC mismatch");
}

TEST_F(Corrupted, LengthByte) {
  std::string bytes = read_bytes(path_);
  bytes[42] ^= 0x40;
  write_bytes(path_, bytes);
  expect_read_error(path_, "record at byte 42: length CRC mismatch");
}

TEST_F(Corrupted, TruncatedAnywhere) {
  const std::string bytes = read_bytes(path_);
  // Cuts in the data CRC, at it, in the data, after the header, inside the header.
  for (size_t cut : {size_t{1}, size_t{4}, size_t{20}, size_t{39 - 12}, size_t{30}}) {
    SCOPED_TRACE(cut);
    write_bytes(path_, bytes.substr(0, bytes.size() - cut));
    expect_read_error(path_, "record at byte 42: truncated");
  }
}

TEST(ReadScalars, MissingFileNamesIt) {
  expect_read_error("/nonexistent/events.out.tfevents.1.kumiko", "cannot open");
}

}  // namespace
}  // namespace kumiko::tensorboard
