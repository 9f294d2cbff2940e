#pragma once
// Loader: serves fixed-length training windows from a prepared data folder
// (docs/data-format.md) in an order that is a pure function of (seed, step)
// (ARCHITECTURE.md rule 2). Data-parallel ranks and micro-batches only choose which
// slice [first, first + count) of a step's global batch they fill.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace kumiko::data {

class MappedShard;

enum class Split { train, val };

class Loader {
 public:
  // Opens every shard of `dir` (memory-mapped), validates headers: bad magic, unsupported
  // version, truncated shard, tokens >= vocab size, tokenizer hash differing from
  // dir/tokenizer.model -> UserError naming the file.
  Loader(const std::string& dir, int64_t seq_len, uint64_t seed);
  ~Loader();
  Loader(Loader&&) noexcept;
  Loader& operator=(Loader&&) noexcept;

  int vocab_size() const { return vocab_size_; }  // of the tokenizer the shards were made with
  const std::string& tokenizer_sha256() const { return tokenizer_sha256_; }
  std::string tokenizer_path() const;  // dir/tokenizer.model
  int64_t num_tokens(Split split) const;
  // Windows of seq_len + 1 tokens, taken every seq_len tokens.
  int64_t num_windows(Split split) const;
  int64_t seq_len() const { return seq_len_; }

  // Fills sequences [first, first + count) of step `step`'s global batch of `global_batch`
  // sequences. inputs, targets: [count, seq_len] (targets = inputs shifted by one token).
  // A pure function of (seed, split, step, sequence index).
  void fill(Split split, int64_t step, int64_t global_batch, int64_t first, int64_t count,
            int32_t* inputs, int32_t* targets) const;

  // Index of the train window that global sequence g = step * global_batch + i reads.
  int64_t train_window(int64_t g) const;

  // Position of the sequential reader: next() hands out step after step of the train split.
  struct Position {
    int64_t step = 0;
    uint64_t seed = 0;
  };
  Position position() const { return {step_, seed_}; }
  void restore(const Position& p);  // UserError when p.seed differs from this loader's seed
  // Fills the train split for the current step, then advances the step by one.
  void next(int64_t global_batch, int64_t first, int64_t count, int32_t* inputs, int32_t* targets);

 private:
  struct Stream {  // the shards of one split, read as one concatenated token stream
    std::vector<std::unique_ptr<MappedShard>> shards;
    std::vector<int64_t> starts;  // first stream index of each shard
    int64_t tokens = 0;
    void read(int64_t begin, int64_t n, int32_t* out) const;  // out: [n]
  };
  const Stream& stream(Split split) const { return split == Split::train ? train_ : val_; }

  std::string dir_;
  int64_t seq_len_;
  uint64_t seed_;
  uint64_t perm_key_;
  int vocab_size_ = 0;
  std::string tokenizer_sha256_;
  Stream train_;
  Stream val_;
  int64_t step_ = 0;
};

// A bijection of [0, n) keyed by (key, epoch): a 6-round balanced Feistel network over
// the smallest even power of two >= n, with cycle-walking. Exposed for tests.
int64_t permute_index(int64_t index, int64_t n, uint64_t key, uint64_t epoch);

}  // namespace kumiko::data
