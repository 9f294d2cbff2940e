#pragma once
// SHA-256 (FIPS 180-4), a small self-contained implementation. Used to tie token
// shards and checkpoints to the exact tokenizer file that produced them.
#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace kumiko {

using Sha256Digest = std::array<uint8_t, 32>;

// Incremental hasher: update() any number of times, then digest() once.
class Sha256 {
 public:
  Sha256();
  void update(const void* data, size_t size);
  void update(std::string_view bytes) { update(bytes.data(), bytes.size()); }
  Sha256Digest digest();  // finalizes; the object must not be updated afterwards

 private:
  void compress(const uint8_t* block);  // one 64-byte block

  std::array<uint32_t, 8> state_;
  std::array<uint8_t, 64> buffer_;
  size_t buffer_used_ = 0;
  uint64_t total_bytes_ = 0;
};

Sha256Digest sha256(std::string_view bytes);
// Lower-case hex (64 characters) of the SHA-256 of `bytes`.
std::string sha256_hex(std::string_view bytes);
// SHA-256 hex of a file's bytes; UserError naming the file when it cannot be read.
std::string sha256_file(const std::string& path);

std::string to_hex(const Sha256Digest& digest);
// Parses 64 hex characters; returns false when `hex` is not a valid digest.
bool from_hex(std::string_view hex, Sha256Digest& digest);

}  // namespace kumiko
