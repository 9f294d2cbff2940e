#include "kumiko/data/loader.h"

#include <algorithm>
#include <bit>
#include <filesystem>
#include <map>
#include <regex>

#include "kumiko/core/error.h"
#include "kumiko/core/log.h"
#include "kumiko/core/rng.h"
#include "kumiko/core/sha256.h"
#include "kumiko/data/shard.h"

namespace kumiko::data {
namespace fs = std::filesystem;

namespace {

constexpr int kFeistelRounds = 6;

uint64_t feistel(uint64_t x, int half_bits, uint64_t key, uint64_t epoch) {
  const uint64_t mask = (uint64_t{1} << half_bits) - 1;
  uint64_t left = x >> half_bits, right = x & mask;
  for (int round = 0; round < kFeistelRounds; ++round) {
    const rng::Block b = rng::philox(key, epoch, (static_cast<uint64_t>(round) << 32) | right);
    const uint64_t f = ((static_cast<uint64_t>(b[1]) << 32) | b[0]) & mask;
    const uint64_t next_right = left ^ f;
    left = right;
    right = next_right;
  }
  return (left << half_bits) | right;
}

// The shard files of one split in `dir`, by index; UserError when an index is missing.
std::vector<fs::path> list_shards(const fs::path& dir, const std::string& prefix) {
  const std::regex pattern(prefix + "_([0-9]{6})\\.bin");
  std::map<uint32_t, fs::path> found;
  for (const auto& entry : fs::directory_iterator(dir)) {
    std::smatch m;
    const std::string name = entry.path().filename().string();
    if (std::regex_match(name, m, pattern))
      found[static_cast<uint32_t>(std::stoul(m[1]))] = entry.path();
  }
  std::vector<fs::path> paths;
  for (const auto& [index, path] : found) {
    const SplitId split = prefix == "train" ? SplitId::train : SplitId::val;
    KUMIKO_USER_CHECK(index == paths.size(), "data folder '", dir.string(), "': shard '",
                      (dir / shard_file_name(split, static_cast<uint32_t>(paths.size()))).string(),
                      "' is missing (found '", path.filename().string(), "')");
    paths.push_back(path);
  }
  return paths;
}

}  // namespace

int64_t permute_index(int64_t index, int64_t n, uint64_t key, uint64_t epoch) {
  KUMIKO_CHECK(n > 0 && index >= 0 && index < n, "permute_index(", index, ", ", n, ")");
  if (n == 1) return 0;
  int bits = std::max(2, static_cast<int>(std::bit_width(static_cast<uint64_t>(n - 1))));
  bits += bits & 1;
  uint64_t x = static_cast<uint64_t>(index);
  do {
    x = feistel(x, bits / 2, key, epoch);
  } while (x >= static_cast<uint64_t>(n));  // cycle-walking: stays a bijection of [0, n)
  return static_cast<int64_t>(x);
}

void Loader::Stream::read(int64_t begin, int64_t n, int32_t* out) const {
  KUMIKO_CHECK(begin >= 0 && begin + n <= tokens, "stream read out of range");
  auto it = std::upper_bound(starts.begin(), starts.end(), begin);
  size_t s = static_cast<size_t>(it - starts.begin()) - 1;
  while (n > 0) {
    const int64_t offset = begin - starts[s];
    const int64_t take = std::min(n, shards[s]->num_tokens() - offset);
    shards[s]->read(offset, take, out);
    out += take;
    begin += take;
    n -= take;
    ++s;
  }
}

Loader::Loader(const std::string& dir, int64_t seq_len, uint64_t seed)
    : dir_(dir), seq_len_(seq_len), seed_(seed), perm_key_(rng::stream_key(seed, "data.train")) {
  KUMIKO_USER_CHECK(seq_len > 0, "data: seq_len must be positive, got ", seq_len);
  KUMIKO_USER_CHECK(fs::is_directory(dir), "data folder '", dir,
                    "' does not exist (create it with kumiko prepare)");
  const std::string model = tokenizer_path();
  KUMIKO_USER_CHECK(fs::is_regular_file(model), "data folder '", dir, "': tokenizer '", model,
                    "' is missing");
  tokenizer_sha256_ = sha256_file(model);
  Sha256Digest expected_sha{};
  from_hex(tokenizer_sha256_, expected_sha);

  for (Split split : {Split::train, Split::val}) {
    const std::string prefix = split == Split::train ? "train" : "val";
    Stream& s = split == Split::train ? train_ : val_;
    for (const fs::path& path : list_shards(dir, prefix)) {
      auto shard = std::make_unique<MappedShard>(path.string());
      const ShardHeader& h = shard->header();
      const std::string p = path.string();
      KUMIKO_USER_CHECK(
          h.split == static_cast<uint32_t>(split == Split::train ? SplitId::train : SplitId::val) &&
              h.shard_index == s.shards.size(),
          "token shard '", p, "': header says split ", h.split, " shard ", h.shard_index,
          ", which does not match its file name");
      KUMIKO_USER_CHECK(h.tokenizer_sha256 == expected_sha, "token shard '", p,
                        "': tokenizer hash ", to_hex(h.tokenizer_sha256), " differs from '", model,
                        "' (", tokenizer_sha256_, "): the shards were made with another tokenizer");
      if (vocab_size_ == 0) vocab_size_ = static_cast<int>(h.vocab_size);
      KUMIKO_USER_CHECK(static_cast<int>(h.vocab_size) == vocab_size_, "token shard '", p,
                        "': vocab size ", h.vocab_size, " differs from the other shards' ",
                        vocab_size_);
      const int64_t bad = shard->find_out_of_range();
      if (bad >= 0) {
        int32_t token = 0;
        shard->read(bad, 1, &token);
        KUMIKO_USER_CHECK(false, "token shard '", p, "': token ", token, " at index ", bad,
                          " is >= the vocab size ", h.vocab_size);
      }
      s.starts.push_back(s.tokens);
      s.tokens += shard->num_tokens();
      s.shards.push_back(std::move(shard));
    }
  }
  KUMIKO_USER_CHECK(!train_.shards.empty(), "data folder '", dir, "': no train_000000.bin found");
  KUMIKO_USER_CHECK(num_windows(Split::train) > 0, "data folder '", dir, "': the train split has ",
                    train_.tokens, " tokens, fewer than seq_len + 1 = ", seq_len + 1);
  log::get("data")->info(
      "data '{}': train {} tokens in {} shard(s), val {} tokens in {} shard(s), vocab {}", dir,
      train_.tokens, train_.shards.size(), val_.tokens, val_.shards.size(), vocab_size_);
}

Loader::~Loader() = default;
Loader::Loader(Loader&&) noexcept = default;
Loader& Loader::operator=(Loader&&) noexcept = default;

std::string Loader::tokenizer_path() const { return (fs::path(dir_) / "tokenizer.model").string(); }

int64_t Loader::num_tokens(Split split) const { return stream(split).tokens; }

int64_t Loader::num_windows(Split split) const {
  const int64_t n = stream(split).tokens;
  return n > seq_len_ ? (n - 1) / seq_len_ : 0;
}

int64_t Loader::train_window(int64_t g) const {
  const int64_t n = num_windows(Split::train);
  return permute_index(g % n, n, perm_key_, static_cast<uint64_t>(g / n));
}

void Loader::fill(Split split, int64_t step, int64_t global_batch, int64_t first, int64_t count,
                  int32_t* inputs, int32_t* targets) const {
  KUMIKO_CHECK(
      step >= 0 && global_batch > 0 && first >= 0 && count >= 0 && first + count <= global_batch,
      "Loader::fill: step ", step, ", slice [", first, ", ", first + count,
      ") of a global batch of ", global_batch);
  const int64_t windows = num_windows(split);
  KUMIKO_USER_CHECK(windows > 0, "data folder '", dir_, "': the ",
                    split == Split::train ? "train" : "val", " split has ", stream(split).tokens,
                    " tokens, fewer than seq_len + 1 = ", seq_len_ + 1);
  const Stream& s = stream(split);
  std::vector<int32_t> window(static_cast<size_t>(seq_len_ + 1));  // [T + 1]
  for (int64_t i = 0; i < count; ++i) {
    const int64_t g = step * global_batch + first + i;
    const int64_t w = split == Split::train ? train_window(g) : g % windows;
    s.read(w * seq_len_, seq_len_ + 1, window.data());
    std::copy(window.begin(), window.end() - 1, inputs + i * seq_len_);   // [count, T]
    std::copy(window.begin() + 1, window.end(), targets + i * seq_len_);  // [count, T]
  }
}

void Loader::restore(const Position& p) {
  KUMIKO_USER_CHECK(p.seed == seed_, "data position: saved with data seed ", p.seed,
                    ", but the loader uses seed ", seed_, " (the data order would change)");
  KUMIKO_USER_CHECK(p.step >= 0, "data position: step must be >= 0, got ", p.step);
  step_ = p.step;
}

void Loader::next(int64_t global_batch, int64_t first, int64_t count, int32_t* inputs,
                  int32_t* targets) {
  fill(Split::train, step_, global_batch, first, count, inputs, targets);
  ++step_;
}

}  // namespace kumiko::data
