#include "kumiko/core/tensorboard.h"

#include <unistd.h>

#include <array>
#include <bit>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>
#include <memory>
#include <string_view>

#include "kumiko/core/error.h"
#include "kumiko/core/log.h"

namespace kumiko::tensorboard {
namespace {

// Protobuf wire types used by Event/Summary (https://protobuf.dev/programming-guides/encoding).
enum class Wire : uint8_t { kVarint = 0, kFixed64 = 1, kBytes = 2, kFixed32 = 5 };

constexpr std::array<uint32_t, 256> make_crc32c_table() {
  std::array<uint32_t, 256> table{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
    table[i] = c;
  }
  return table;
}
constexpr std::array<uint32_t, 256> kCrc32cTable = make_crc32c_table();

// ---- encoding ----

void put_varint(std::string& out, uint64_t v) {
  for (; v >= 0x80; v >>= 7) out.push_back(static_cast<char>((v & 0x7F) | 0x80));
  out.push_back(static_cast<char>(v));
}
void put_key(std::string& out, uint32_t field, Wire wire) {
  put_varint(out, (uint64_t{field} << 3) | static_cast<uint64_t>(wire));
}
void put_le(std::string& out, uint64_t v, int bytes) {  // little endian, any host order
  for (int i = 0; i < bytes; ++i) out.push_back(static_cast<char>(v >> (8 * i)));
}
void put_bytes(std::string& out, uint32_t field, std::string_view bytes) {
  put_key(out, field, Wire::kBytes);
  put_varint(out, bytes.size());
  out.append(bytes);
}
// Event fields 1 (wall_time) and 2 (step). Both are always written, even when zero:
// any protobuf reader accepts explicit defaults, and a fixed layout is easier to test.
std::string event_prefix(double wall_time, int64_t step) {
  std::string event;
  put_key(event, 1, Wire::kFixed64);
  put_le(event, std::bit_cast<uint64_t>(wall_time), 8);
  put_key(event, 2, Wire::kVarint);
  put_varint(event, static_cast<uint64_t>(step));  // negative steps: 10-byte two's complement
  return event;
}
// float32 of `v`; finite values beyond float's range become +-inf explicitly (a plain
// cast of an out-of-range double is undefined behaviour).
float to_float(double v) {
  constexpr float kInf = std::numeric_limits<float>::infinity();
  if (std::isfinite(v) && std::fabs(v) > std::numeric_limits<float>::max())
    return v > 0 ? kInf : -kInf;
  return static_cast<float>(v);
}

// ---- decoding ----

uint64_t load_le(const uint8_t* p, int bytes) {
  uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) v |= uint64_t{p[i]} << (8 * i);
  return v;
}
bool read_varint(std::string_view msg, size_t& pos, uint64_t& v) {
  v = 0;
  for (int shift = 0; shift < 64 && pos < msg.size(); shift += 7) {
    const auto byte = static_cast<uint8_t>(msg[pos++]);
    v |= uint64_t{byte & 0x7Fu} << shift;
    if (!(byte & 0x80)) return true;
  }
  return false;  // ran off the message or longer than 10 bytes
}

struct Field {
  uint64_t number = 0;
  Wire wire = Wire::kVarint;
  uint64_t scalar = 0;     // varint and fixed fields
  std::string_view bytes;  // length-delimited fields
};
// Calls visit(field) for every field of `msg`; false when the message is malformed
// or visit returns false.
template <typename Visit>
bool for_each_field(std::string_view msg, Visit&& visit) {
  size_t pos = 0;
  while (pos < msg.size()) {
    uint64_t key = 0;
    if (!read_varint(msg, pos, key) || (key >> 3) == 0) return false;
    Field f;
    f.number = key >> 3;
    f.wire = static_cast<Wire>(key & 7);
    const auto* p = reinterpret_cast<const uint8_t*>(msg.data()) + pos;
    switch (f.wire) {
      case Wire::kVarint:
        if (!read_varint(msg, pos, f.scalar)) return false;
        break;
      case Wire::kFixed64:
      case Wire::kFixed32: {
        const size_t n = f.wire == Wire::kFixed64 ? 8 : 4;
        if (msg.size() - pos < n) return false;
        f.scalar = load_le(p, static_cast<int>(n));
        pos += n;
        break;
      }
      case Wire::kBytes: {
        uint64_t n = 0;
        if (!read_varint(msg, pos, n) || n > msg.size() - pos) return false;
        f.bytes = msg.substr(pos, n);
        pos += n;
        break;
      }
      default:
        return false;  // groups (3, 4) and unknown wire types never appear in an Event
    }
    if (!visit(f)) return false;
  }
  return true;
}

// Appends the simple_value scalars of one Event to `out`; false when malformed.
bool decode_event(std::string_view event, std::vector<ScalarEvent>& out) {
  ScalarEvent header;
  const size_t first = out.size();
  const bool ok = for_each_field(event, [&](const Field& f) {
    if (f.number == 1 && f.wire == Wire::kFixed64)
      header.wall_time = std::bit_cast<double>(f.scalar);
    if (f.number == 2 && f.wire == Wire::kVarint) header.step = static_cast<int64_t>(f.scalar);
    if (f.number != 5 || f.wire != Wire::kBytes) return true;
    return for_each_field(f.bytes, [&](const Field& value) {  // Summary.value
      if (value.number != 1 || value.wire != Wire::kBytes) return true;
      ScalarEvent s;
      bool simple = false;
      const bool value_ok = for_each_field(value.bytes, [&](const Field& v) {
        if (v.number == 1 && v.wire == Wire::kBytes) s.tag = std::string(v.bytes);
        if (v.number == 2 && v.wire == Wire::kFixed32) {
          s.value = std::bit_cast<float>(static_cast<uint32_t>(v.scalar));
          simple = true;
        }
        return true;
      });
      if (simple) out.push_back(std::move(s));
      return value_ok;
    });
  });
  // wall_time and step may follow the summary in the encoding: fill them in last.
  for (size_t i = first; i < out.size(); ++i) {
    out[i].wall_time = header.wall_time;
    out[i].step = header.step;
  }
  return ok;
}

UserError record_error(const std::string& path, uint64_t offset, const std::string& why) {
  return UserError(
      detail::concat("TensorBoard event file '", path, "': record at byte ", offset, ": ", why));
}

}  // namespace

uint32_t crc32c(const void* data, size_t n) {
  const auto* p = static_cast<const uint8_t*>(data);
  uint32_t c = 0xFFFFFFFFu;
  for (size_t i = 0; i < n; ++i) c = kCrc32cTable[(c ^ p[i]) & 0xFF] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

uint32_t masked_crc32c(const void* data, size_t n) {
  const uint32_t c = crc32c(data, n);
  return ((c >> 15) | (c << 17)) + 0xa282ead8u;
}

double unix_seconds_now() {
  using Seconds = std::chrono::duration<double>;
  return std::chrono::duration_cast<Seconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

EventWriter::EventWriter(const std::string& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  KUMIKO_USER_CHECK(!ec, "cannot create the TensorBoard folder '", dir, "': ", ec.message());
  std::array<char, 256> buffer{};  // zeroed: gethostname may not terminate a truncated name
  const std::string host =
      ::gethostname(buffer.data(), buffer.size() - 1) == 0 ? buffer.data() : "localhost";
  const double now = unix_seconds_now();
  // "x": never append to or truncate another writer's file. A second writer of the same
  // process in the same second (a run resumed in-process, as the tests do) takes the
  // next free suffix: .kumiko, .kumiko1, .kumiko2, ...
  for (int n = 0; n < 1000 && file_ == nullptr; ++n) {
    path_ = (std::filesystem::path(dir) / detail::concat("events.out.tfevents.", static_cast<int64_t>(now), ".",
                                                         host, ".", ::getpid(), ".kumiko",
                                                         n == 0 ? std::string() : std::to_string(n)))
                .string();
    file_ = std::fopen(path_.c_str(), "wbx");
    if (file_ == nullptr && errno != EEXIST) break;
  }
  KUMIKO_USER_CHECK(file_ != nullptr, "cannot create the TensorBoard event file '", path_,
                    "': ", std::strerror(errno));
  std::string event = event_prefix(now, 0);
  put_bytes(event, 3, "brain.Event:2");
  try {
    write_event(event);
  } catch (...) {
    std::fclose(file_);  // the destructor does not run for a throwing constructor
    throw;
  }
}

EventWriter::~EventWriter() {
  const bool flushed = std::fflush(file_) == 0;
  const bool closed = std::fclose(file_) == 0;
  if (!flushed || !closed)
    log::get("tensorboard")
        ->warn("losing the last scalars of '{}': {}", path_, std::strerror(errno));
}

void EventWriter::scalar(const std::string& tag, int64_t step, double value, double wall_time_s) {
  std::string summary_value;  // Summary.Value { tag = 1; simple_value = 2 }
  put_bytes(summary_value, 1, tag);
  put_key(summary_value, 2, Wire::kFixed32);
  put_le(summary_value, std::bit_cast<uint32_t>(to_float(value)), 4);
  std::string summary;
  put_bytes(summary, 1, summary_value);
  std::string event = event_prefix(wall_time_s, step);
  put_bytes(event, 5, summary);
  write_event(event);
}

void EventWriter::write_event(const std::string& event) {
  record_.clear();
  put_le(record_, event.size(), 8);
  put_le(record_, masked_crc32c(record_.data(), 8), 4);
  record_ += event;
  put_le(record_, masked_crc32c(event.data(), event.size()), 4);
  KUMIKO_USER_CHECK(std::fwrite(record_.data(), 1, record_.size(), file_) == record_.size(),
                    "cannot write to the TensorBoard event file '", path_,
                    "': ", std::strerror(errno));
}

void EventWriter::flush() {
  KUMIKO_USER_CHECK(std::fflush(file_) == 0, "cannot write to the TensorBoard event file '", path_,
                    "': ", std::strerror(errno));
}

std::vector<ScalarEvent> read_scalars(const std::string& path) {
  std::error_code ec;
  const uint64_t size = std::filesystem::file_size(path, ec);
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> file(std::fopen(path.c_str(), "rb"),
                                                       &std::fclose);
  KUMIKO_USER_CHECK(!ec && file, "cannot open the TensorBoard event file '", path,
                    "': ", ec ? ec.message() : std::strerror(errno));
  std::vector<ScalarEvent> out;
  std::string data;
  for (uint64_t offset = 0; offset < size;) {
    std::array<uint8_t, 12> header{};  // uint64 length, uint32 masked CRC of the length
    if (std::fread(header.data(), 1, header.size(), file.get()) != header.size())
      throw record_error(path, offset, "truncated length header");
    const uint64_t length = load_le(header.data(), 8);
    if (masked_crc32c(header.data(), 8) != load_le(header.data() + 8, 4))
      throw record_error(path, offset, "length CRC mismatch");
    // Bound the length by the file before allocating: the length CRC is only 32 bits.
    if (length > size - offset - 12 || size - offset - 12 - length < 4)
      throw record_error(
          path, offset,
          detail::concat("truncated: ", length, "-byte record, file ends at byte ", size));
    data.resize(length + 4);  // data, then its masked CRC
    if (std::fread(data.data(), 1, data.size(), file.get()) != data.size())
      throw record_error(path, offset, "truncated data");
    const auto* crc = reinterpret_cast<const uint8_t*>(data.data()) + length;
    if (masked_crc32c(data.data(), length) != load_le(crc, 4))
      throw record_error(path, offset, "data CRC mismatch");
    if (!decode_event(std::string_view(data).substr(0, length), out))
      throw record_error(path, offset, "malformed Event protobuf");
    offset += 12 + length + 4;
  }
  return out;
}

}  // namespace kumiko::tensorboard
