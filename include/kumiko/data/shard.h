#pragma once
// Token shards: a fixed 256-byte little-endian header, then the tokens (uint16 when
// the vocabulary fits, else uint32). Byte layout: docs/data-format.md.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <span>
#include <string>

#include "kumiko/core/sha256.h"

namespace kumiko::data {

inline constexpr char kShardMagic[8] = {'K', 'U', 'M', 'I', 'K', 'O', 'T', 'K'};
inline constexpr uint32_t kShardVersion = 1;
inline constexpr uint32_t kShardHeaderBytes = 256;

enum class SplitId : uint32_t { train = 0, val = 1 };

struct ShardHeader {
  uint32_t version = kShardVersion;
  uint32_t token_bytes = 2;  // 2 (uint16) or 4 (uint32)
  uint64_t num_tokens = 0;
  uint32_t vocab_size = 0;
  uint32_t header_bytes = kShardHeaderBytes;
  Sha256Digest tokenizer_sha256{};
  uint32_t split = 0;  // SplitId
  uint32_t shard_index = 0;
};

// Token width for a vocabulary: 2 bytes up to 65536 ids, else 4.
uint32_t token_bytes_for_vocab(int64_t vocab_size);

// Header <-> its 256 bytes.
void encode_header(const ShardHeader& header, uint8_t* out);  // out: [256]
// Validates magic, version, token width and header size; UserError naming `path`.
ShardHeader decode_header(const uint8_t* bytes, size_t size, const std::string& path);

// "train_000003.bin"
std::string shard_file_name(SplitId split, uint32_t index);

// Writes the shards of one split into `dir`: tokens are appended, a shard is closed
// every `shard_tokens` tokens. Each shard is written as NAME.tmp and renamed to NAME
// only when complete, so a final name never holds a half-written shard.
class ShardWriter {
 public:
  ShardWriter(std::string dir, SplitId split, int64_t shard_tokens, int64_t vocab_size,
              const Sha256Digest& tokenizer_sha256);
  ~ShardWriter();  // removes an unfinished temporary file
  ShardWriter(const ShardWriter&) = delete;
  ShardWriter& operator=(const ShardWriter&) = delete;

  void append(std::span<const int32_t> tokens);
  void finish();  // closes the last shard (an empty split writes no shard)

  int64_t tokens_written() const { return total_tokens_; }
  int64_t shards_written() const { return shards_done_; }
  int64_t bytes_written() const { return bytes_done_; }

 private:
  void open_shard();
  void close_shard();

  std::string dir_;
  ShardHeader header_;
  int64_t shard_tokens_;
  std::FILE* file_ = nullptr;
  std::string tmp_path_;
  std::string final_path_;
  int64_t in_shard_ = 0;
  int64_t total_tokens_ = 0;
  int64_t shards_done_ = 0;
  int64_t bytes_done_ = 0;
  std::string buffer_;  // tokens converted to the shard's width
};

// A read-only memory map of one validated shard.
class MappedShard {
 public:
  // Maps `path` and validates the header and the file size (not the token values).
  explicit MappedShard(const std::string& path);
  ~MappedShard();
  MappedShard(const MappedShard&) = delete;
  MappedShard& operator=(const MappedShard&) = delete;

  const ShardHeader& header() const { return header_; }
  const std::string& path() const { return path_; }
  int64_t num_tokens() const { return static_cast<int64_t>(header_.num_tokens); }
  // Copies tokens [begin, begin + n) as int32.
  void read(int64_t begin, int64_t n, int32_t* out) const;
  // Index of the first token >= vocab_size, or -1 when all are valid.
  int64_t find_out_of_range() const;

 private:
  std::string path_;
  ShardHeader header_;
  const uint8_t* map_ = nullptr;
  size_t map_bytes_ = 0;
};

}  // namespace kumiko::data
