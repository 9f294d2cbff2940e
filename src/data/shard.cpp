#include "kumiko/data/shard.h"

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <filesystem>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kumiko/core/error.h"

namespace kumiko::data {

static_assert(std::endian::native == std::endian::little,
              "token shards are little-endian and memory-mapped as is");

namespace {

void put_u32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
void put_u64(uint8_t* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
uint32_t get_u32(const uint8_t* p) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v |= uint32_t{p[i]} << (8 * i);
  return v;
}
uint64_t get_u64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= uint64_t{p[i]} << (8 * i);
  return v;
}

// Header field offsets (docs/data-format.md).
constexpr size_t kOffMagic = 0, kOffVersion = 8, kOffTokenBytes = 12, kOffNumTokens = 16,
                 kOffVocab = 24, kOffHeaderBytes = 28, kOffSha = 32, kOffSplit = 64,
                 kOffShardIndex = 68;

}  // namespace

uint32_t token_bytes_for_vocab(int64_t vocab_size) { return vocab_size <= 65536 ? 2 : 4; }

void encode_header(const ShardHeader& h, uint8_t* out) {
  std::memset(out, 0, kShardHeaderBytes);
  std::memcpy(out + kOffMagic, kShardMagic, sizeof(kShardMagic));
  put_u32(out + kOffVersion, h.version);
  put_u32(out + kOffTokenBytes, h.token_bytes);
  put_u64(out + kOffNumTokens, h.num_tokens);
  put_u32(out + kOffVocab, h.vocab_size);
  put_u32(out + kOffHeaderBytes, h.header_bytes);
  std::memcpy(out + kOffSha, h.tokenizer_sha256.data(), 32);
  put_u32(out + kOffSplit, h.split);
  put_u32(out + kOffShardIndex, h.shard_index);
}

ShardHeader decode_header(const uint8_t* bytes, size_t size, const std::string& path) {
  KUMIKO_USER_CHECK(size >= kShardHeaderBytes, "token shard '", path,
                    "': truncated header, expected ", kShardHeaderBytes, " bytes, found ", size);
  KUMIKO_USER_CHECK(std::memcmp(bytes, kShardMagic, sizeof(kShardMagic)) == 0, "token shard '",
                    path, "': bad magic, expected 'KUMIKOTK' (not a kumiko token shard)");
  ShardHeader h;
  h.version = get_u32(bytes + kOffVersion);
  KUMIKO_USER_CHECK(h.version == kShardVersion, "token shard '", path,
                    "': unsupported format version ", h.version, ", expected ", kShardVersion);
  h.token_bytes = get_u32(bytes + kOffTokenBytes);
  KUMIKO_USER_CHECK(h.token_bytes == 2 || h.token_bytes == 4, "token shard '", path,
                    "': token width must be 2 or 4 bytes, found ", h.token_bytes);
  h.num_tokens = get_u64(bytes + kOffNumTokens);
  h.vocab_size = get_u32(bytes + kOffVocab);
  KUMIKO_USER_CHECK(h.vocab_size > 0 && h.token_bytes >= token_bytes_for_vocab(h.vocab_size),
                    "token shard '", path, "': vocab size ", h.vocab_size, " does not fit ",
                    h.token_bytes, "-byte tokens");
  h.header_bytes = get_u32(bytes + kOffHeaderBytes);
  KUMIKO_USER_CHECK(h.header_bytes == kShardHeaderBytes, "token shard '", path, "': header size ",
                    h.header_bytes, ", expected ", kShardHeaderBytes);
  std::memcpy(h.tokenizer_sha256.data(), bytes + kOffSha, 32);
  h.split = get_u32(bytes + kOffSplit);
  h.shard_index = get_u32(bytes + kOffShardIndex);
  return h;
}

std::string shard_file_name(SplitId split, uint32_t index) {
  char name[32];
  std::snprintf(name, sizeof(name), "%s_%06u.bin", split == SplitId::train ? "train" : "val",
                index);
  return name;
}

// ---- ShardWriter ----------------------------------------------------------------

ShardWriter::ShardWriter(std::string dir, SplitId split, int64_t shard_tokens, int64_t vocab_size,
                         const Sha256Digest& tokenizer_sha256)
    : dir_(std::move(dir)), shard_tokens_(shard_tokens) {
  KUMIKO_USER_CHECK(shard_tokens > 0, "--shard-tokens: expected a positive count, got ",
                    shard_tokens);
  KUMIKO_CHECK(vocab_size > 0 && vocab_size <= UINT32_MAX, "vocab size ", vocab_size);
  header_.token_bytes = token_bytes_for_vocab(vocab_size);
  header_.vocab_size = static_cast<uint32_t>(vocab_size);
  header_.tokenizer_sha256 = tokenizer_sha256;
  header_.split = static_cast<uint32_t>(split);
  header_.shard_index = 0;
}

ShardWriter::~ShardWriter() {
  if (file_ != nullptr) {
    std::fclose(file_);
    std::remove(tmp_path_.c_str());
  }
}

void ShardWriter::open_shard() {
  final_path_ = (std::filesystem::path(dir_) /
                 shard_file_name(static_cast<SplitId>(header_.split), header_.shard_index))
                    .string();
  tmp_path_ = final_path_ + ".tmp";
  file_ = std::fopen(tmp_path_.c_str(), "wb");
  KUMIKO_USER_CHECK(file_ != nullptr, "cannot create '", tmp_path_, "': ", std::strerror(errno));
  uint8_t header[kShardHeaderBytes];
  header_.num_tokens = 0;  // patched by close_shard()
  encode_header(header_, header);
  KUMIKO_USER_CHECK(std::fwrite(header, 1, sizeof(header), file_) == sizeof(header),
                    "cannot write '", tmp_path_, "': ", std::strerror(errno));
  in_shard_ = 0;
}

void ShardWriter::close_shard() {
  header_.num_tokens = static_cast<uint64_t>(in_shard_);
  uint8_t header[kShardHeaderBytes];
  encode_header(header_, header);
  bool ok = std::fseek(file_, 0, SEEK_SET) == 0 &&
            std::fwrite(header, 1, sizeof(header), file_) == sizeof(header);
  ok = std::fflush(file_) == 0 && ok;
  ok = ::fsync(::fileno(file_)) == 0 && ok;
  ok = std::fclose(file_) == 0 && ok;
  file_ = nullptr;
  if (!ok) std::remove(tmp_path_.c_str());
  KUMIKO_USER_CHECK(ok, "cannot finish '", tmp_path_, "': ", std::strerror(errno));
  std::filesystem::rename(tmp_path_, final_path_);
  bytes_done_ += kShardHeaderBytes + in_shard_ * header_.token_bytes;
  ++shards_done_;
  ++header_.shard_index;
}

void ShardWriter::append(std::span<const int32_t> tokens) {
  size_t pos = 0;
  while (pos < tokens.size()) {
    if (file_ == nullptr) open_shard();
    const size_t n = static_cast<size_t>(
        std::min<int64_t>(shard_tokens_ - in_shard_, static_cast<int64_t>(tokens.size() - pos)));
    buffer_.resize(n * header_.token_bytes);
    for (size_t i = 0; i < n; ++i) {
      const int32_t t = tokens[pos + i];
      KUMIKO_CHECK(t >= 0 && static_cast<uint32_t>(t) < header_.vocab_size, "token ", t,
                   " outside the vocabulary of ", header_.vocab_size);
      if (header_.token_bytes == 2) {
        const uint16_t v = static_cast<uint16_t>(t);
        std::memcpy(buffer_.data() + 2 * i, &v, 2);
      } else {
        const uint32_t v = static_cast<uint32_t>(t);
        std::memcpy(buffer_.data() + 4 * i, &v, 4);
      }
    }
    KUMIKO_USER_CHECK(std::fwrite(buffer_.data(), 1, buffer_.size(), file_) == buffer_.size(),
                      "cannot write '", tmp_path_, "': ", std::strerror(errno));
    in_shard_ += static_cast<int64_t>(n);
    total_tokens_ += static_cast<int64_t>(n);
    pos += n;
    if (in_shard_ == shard_tokens_) close_shard();
  }
}

void ShardWriter::finish() {
  if (file_ != nullptr) close_shard();
}

// ---- MappedShard ----------------------------------------------------------------

MappedShard::MappedShard(const std::string& path) : path_(path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  KUMIKO_USER_CHECK(fd >= 0, "token shard '", path, "': cannot open (", std::strerror(errno), ")");
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    KUMIKO_USER_CHECK(false, "token shard '", path, "': cannot stat (", std::strerror(errno), ")");
  }
  map_bytes_ = static_cast<size_t>(st.st_size);
  if (map_bytes_ > 0) {
    void* p = ::mmap(nullptr, map_bytes_, PROT_READ, MAP_SHARED, fd, 0);
    ::close(fd);
    KUMIKO_USER_CHECK(p != MAP_FAILED, "token shard '", path, "': cannot map (",
                      std::strerror(errno), ")");
    map_ = static_cast<const uint8_t*>(p);
  } else {
    ::close(fd);
  }
  try {
    header_ = decode_header(map_, map_bytes_, path);
    const uint64_t expected = kShardHeaderBytes + header_.num_tokens * header_.token_bytes;
    KUMIKO_USER_CHECK(map_bytes_ >= expected, "token shard '", path,
                      "': truncated, header declares ", header_.num_tokens, " tokens (", expected,
                      " bytes), file has ", map_bytes_, " bytes");
    KUMIKO_USER_CHECK(map_bytes_ == expected, "token shard '", path,
                      "': size mismatch, header declares ", header_.num_tokens, " tokens (",
                      expected, " bytes), file has ", map_bytes_, " bytes");
  } catch (...) {
    if (map_ != nullptr) ::munmap(const_cast<uint8_t*>(map_), map_bytes_);
    throw;
  }
}

MappedShard::~MappedShard() {
  if (map_ != nullptr) ::munmap(const_cast<uint8_t*>(map_), map_bytes_);
}

void MappedShard::read(int64_t begin, int64_t n, int32_t* out) const {
  KUMIKO_CHECK(begin >= 0 && n >= 0 && begin + n <= num_tokens(), "read [", begin, ", ", begin + n,
               ") outside ", path_, " (", num_tokens(), " tokens)");
  const uint8_t* base = map_ + kShardHeaderBytes;
  if (header_.token_bytes == 2) {
    const auto* src = reinterpret_cast<const uint16_t*>(base) + begin;
    for (int64_t i = 0; i < n; ++i) out[i] = src[i];
  } else {
    const auto* src = reinterpret_cast<const uint32_t*>(base) + begin;
    for (int64_t i = 0; i < n; ++i) out[i] = static_cast<int32_t>(src[i]);
  }
}

int64_t MappedShard::find_out_of_range() const {
  const uint8_t* base = map_ + kShardHeaderBytes;
  const int64_t n = num_tokens();
  const uint32_t vocab = header_.vocab_size;
  int64_t first = n;
  if (header_.token_bytes == 2) {
    const auto* t = reinterpret_cast<const uint16_t*>(base);
#pragma omp parallel for reduction(min : first) schedule(static)
    for (int64_t i = 0; i < n; ++i)
      if (t[i] >= vocab && i < first) first = i;
  } else {
    const auto* t = reinterpret_cast<const uint32_t*>(base);
#pragma omp parallel for reduction(min : first) schedule(static)
    for (int64_t i = 0; i < n; ++i)
      if (t[i] >= vocab && i < first) first = i;
  }
  return first == n ? -1 : first;
}

}  // namespace kumiko::data
