#pragma once
// Tokenizer: a SentencePiece model (BPE or unigram, byte fallback on) behind a
// small value-type API. SentencePiece's headers stay in src/data.
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace kumiko::data {

class Tokenizer {
 public:
  // Loads a SentencePiece `.model` file; UserError naming the file if it is missing
  // or not a valid model.
  static Tokenizer load(const std::string& path);

  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

  std::vector<int32_t> encode(std::string_view text) const;
  // UserError when an id is outside [0, vocab_size()).
  std::string decode(std::span<const int32_t> ids) const;
  int vocab_size() const;
  int eos_id() const;
  const std::string& sha256() const { return sha256_; }  // hex, of the .model file bytes
  const std::string& path() const { return path_; }

 private:
  struct Impl;
  Tokenizer(std::unique_ptr<Impl> impl, std::string path, std::string sha256);

  std::unique_ptr<Impl> impl_;
  std::string path_;
  std::string sha256_;
};

struct TokenizerTrainOptions {
  std::vector<std::string_view> texts;  // training text (caller-owned), one entry per document
  int vocab_size = 4096;
  std::string model_type = "bpe";     // bpe | unigram
  double character_coverage = 0.0;    // 0 = automatic: 1.0 for mostly-ASCII text, 0.9995 otherwise
  int threads = 0;                    // 0 = all cores
  int64_t max_sentences = 2'000'000;  // input_sentence_size: sampled (seeded) when there are more
  uint32_t seed = 1234;               // SentencePiece's sampling seed
};

// Trains a SentencePiece model and returns the serialized `.model` bytes.
// Normalization is the identity (decode(encode(x)) == x for any valid UTF-8), no
// dummy prefix, spaces kept, digits split, unknown characters fall back to bytes.
// Ids: unk 0, bos 1, eos 2, no pad. UserError for a vocabulary size the text cannot fill.
std::string train_tokenizer(const TokenizerTrainOptions& options);

inline constexpr int kMinVocabSize = 300;  // 256 byte pieces + specials + some merges
inline constexpr int kMaxVocabSize = 1 << 20;

}  // namespace kumiko::data
