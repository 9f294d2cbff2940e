#pragma once
// TensorBoard event files, written and read without libprotobuf.
//
// File: dir/events.out.tfevents.<unix seconds>.<hostname>.<pid>.kumiko (TensorBoard
// only loads files whose name contains "tfevents"). The file is a sequence of
// TFRecords, all integers little endian:
//   uint64 length | uint32 masked_crc32c(length's 8 bytes) | data[length] |
//   uint32 masked_crc32c(data)
// Each data is one serialized tensorflow.Event (protobuf wire format, field numbers
// from tensorboard/compat/proto/event.proto and summary.proto):
//   Event   { double wall_time = 1; int64 step = 2;
//             oneof what { string file_version = 3; Summary summary = 5; } }
//   Summary { repeated Value value = 1; }
//   Value   { string tag = 1; float simple_value = 2; }
// The first record is {wall_time, step 0, file_version "brain.Event:2"}; every
// scalar() is one more record holding one Value. Values are float32 on disk
// (simple_value), as TensorBoard's legacy scalars are.
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

namespace kumiko::tensorboard {

// Seconds since the Unix epoch, with sub-second resolution (an Event's wall_time).
double unix_seconds_now();

// One event file. Not thread-safe: one thread (rank 0's trainer) calls it.
class EventWriter {
 public:
  // Creates `dir` if needed and the event file inside it, and writes the
  // file_version record. UserError naming the path when either cannot be created.
  explicit EventWriter(const std::string& dir);
  ~EventWriter();  // flushes and closes; a failure here is logged, not thrown
  EventWriter(const EventWriter&) = delete;
  EventWriter& operator=(const EventWriter&) = delete;

  // Appends one record; `value` is stored as float32 (NaN and infinities kept).
  // UserError naming the file when the write fails (e.g. disk full).
  void scalar(const std::string& tag, int64_t step, double value,
              double wall_time_s = unix_seconds_now());
  // Hands buffered records to the OS (fflush, no fsync) so a reader following the
  // file sees every step written so far.
  void flush();
  const std::string& path() const { return path_; }

 private:
  void write_event(const std::string& event);  // frames and writes one record

  std::string path_;
  std::FILE* file_ = nullptr;
  std::string record_;  // scratch for the framed record, reused across scalar() calls
};

struct ScalarEvent {
  std::string tag;
  int64_t step = 0;
  double wall_time = 0;
  float value = 0;
};

// Every simple_value scalar of one event file, in file order (other Event kinds,
// e.g. file_version or tensor summaries, are skipped). Checks the length and data
// CRCs of every record; a bad CRC, a truncated record or malformed protobuf is a
// UserError naming the file and the byte offset of the record.
std::vector<ScalarEvent> read_scalars(const std::string& path);

// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), as TFRecord uses.
uint32_t crc32c(const void* data, size_t n);
// TFRecord's masked CRC: ((crc >> 15) | (crc << 17)) + 0xa282ead8. Masking keeps a
// CRC computed over data that itself contains CRCs from being trivially zero.
uint32_t masked_crc32c(const void* data, size_t n);

}  // namespace kumiko::tensorboard
