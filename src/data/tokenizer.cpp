#include "kumiko/data/tokenizer.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <thread>
#include <unordered_map>

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include "kumiko/core/error.h"
#include "kumiko/core/log.h"
#include "kumiko/core/sha256.h"

namespace kumiko::data {

struct Tokenizer::Impl {
  sentencepiece::SentencePieceProcessor sp;
};

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl, std::string path, std::string sha256)
    : impl_(std::move(impl)), path_(std::move(path)), sha256_(std::move(sha256)) {}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

Tokenizer Tokenizer::load(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  KUMIKO_USER_CHECK(in.good(), "tokenizer '", path, "': cannot open (", std::strerror(errno), ")");
  std::ostringstream buffer;
  buffer << in.rdbuf();
  const std::string bytes = buffer.str();
  KUMIKO_USER_CHECK(!bytes.empty(), "tokenizer '", path,
                    "': file is empty, expected a SentencePiece model");
  auto impl = std::make_unique<Impl>();
  const auto status = impl->sp.LoadFromSerializedProto(bytes);
  KUMIKO_USER_CHECK(status.ok() && impl->sp.GetPieceSize() > 0, "tokenizer '", path,
                    "': not a valid SentencePiece model (", status.ToString(), ")");
  return Tokenizer(std::move(impl), path, sha256_hex(bytes));
}

std::vector<int32_t> Tokenizer::encode(std::string_view text) const {
  std::vector<int> ids;
  const auto status = impl_->sp.Encode(text, &ids);
  KUMIKO_CHECK(status.ok(), "SentencePiece encode failed: ", status.ToString());
  return {ids.begin(), ids.end()};
}

std::string Tokenizer::decode(std::span<const int32_t> ids) const {
  const int vocab = vocab_size();
  std::vector<int> v(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    KUMIKO_USER_CHECK(ids[i] >= 0 && ids[i] < vocab, "tokenizer '", path_, "': token id ", ids[i],
                      " at position ", i, " is outside [0, ", vocab, ")");
    v[i] = ids[i];
  }
  std::string text;
  const auto status = impl_->sp.Decode(v, &text);
  KUMIKO_CHECK(status.ok(), "SentencePiece decode failed: ", status.ToString());
  return text;
}

int Tokenizer::vocab_size() const { return impl_->sp.GetPieceSize(); }
int Tokenizer::eos_id() const { return impl_->sp.eos_id(); }

namespace {

constexpr size_t kMaxSentenceBytes = 8192;

// Hands SentencePiece the lines of the documents; lines longer than
// kMaxSentenceBytes are cut at UTF-8 character boundaries so none is dropped.
class LineIterator : public sentencepiece::SentenceIterator {
 public:
  explicit LineIterator(const std::vector<std::string_view>& texts) : texts_(texts) { advance(); }
  bool done() const override { return doc_ >= texts_.size(); }
  void Next() override { advance(); }
  const std::string& value() const override { return value_; }
  sentencepiece::util::Status status() const override { return {}; }

 private:
  void advance() {
    while (doc_ < texts_.size()) {
      const std::string_view text = texts_[doc_];
      if (pos_ >= text.size()) {
        ++doc_;
        pos_ = 0;
        continue;
      }
      size_t end = text.find('\n', pos_);
      if (end == std::string_view::npos) end = text.size();
      size_t cut = end;
      if (cut - pos_ > kMaxSentenceBytes) {
        cut = pos_ + kMaxSentenceBytes;
        while (cut > pos_ && (static_cast<unsigned char>(text[cut]) & 0xC0) == 0x80) --cut;
      }
      value_.assign(text.substr(pos_, cut - pos_));
      pos_ = cut == end ? end + 1 : cut;
      if (!value_.empty() && value_.back() == '\r') value_.pop_back();
      if (!value_.empty()) return;
    }
  }

  const std::vector<std::string_view>& texts_;
  size_t doc_ = 0;
  size_t pos_ = 0;
  std::string value_;
};

// Character coverage for automatic mode: 1.0 for mostly-ASCII text, 0.9995 otherwise,
// lowered further when the characters it keeps would not leave room for merges in the
// vocabulary (Japanese has thousands of distinct characters; the rest use byte fallback).
double automatic_coverage(const std::vector<std::string_view>& texts, int vocab_size) {
  std::unordered_map<uint32_t, int64_t> counts;  // code point -> occurrences
  int64_t total = 0, non_ascii = 0;
  for (std::string_view t : texts) {
    for (size_t i = 0; i < t.size();) {
      const auto c = static_cast<unsigned char>(t[i]);
      const int len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : 4;
      uint32_t cp = 0;
      for (int k = 0; k < len && i + k < t.size(); ++k)
        cp = (cp << 8) | static_cast<unsigned char>(t[i + k]);
      i += len;
      if (cp == '\n' || cp == '\r') continue;
      ++counts[cp];
      ++total;
      non_ascii += len > 1;
    }
  }
  double coverage = total > 0 && non_ascii * 10 > total ? 0.9995 : 1.0;
  const auto budget = static_cast<size_t>(std::max(1, (vocab_size - 259) * 2 / 3));
  if (counts.size() <= budget) return coverage;
  std::vector<int64_t> sorted;
  sorted.reserve(counts.size());
  for (const auto& [cp, n] : counts) sorted.push_back(n);
  std::sort(sorted.begin(), sorted.end(), std::greater<>());
  int64_t kept = 0;
  for (size_t k = 0; k < budget; ++k) kept += sorted[k];
  // SentencePiece adds characters while the covered fraction is below the target; it
  // accepts targets in [0.98, 1].
  const double fit = static_cast<double>(kept) / static_cast<double>(total) * (1 - 1e-9);
  return std::clamp(fit, 0.98, coverage);
}

}  // namespace

std::string train_tokenizer(const TokenizerTrainOptions& options) {
  KUMIKO_USER_CHECK(options.model_type == "bpe" || options.model_type == "unigram",
                    "--model-type: expected bpe or unigram, got '", options.model_type, "'");
  KUMIKO_USER_CHECK(options.vocab_size >= kMinVocabSize && options.vocab_size <= kMaxVocabSize,
                    "--vocab-size: expected a value in [", kMinVocabSize, ", ", kMaxVocabSize,
                    "] (byte fallback needs 256 byte pieces), got ", options.vocab_size);
  const double coverage = options.character_coverage > 0
                              ? options.character_coverage
                              : automatic_coverage(options.texts, options.vocab_size);
  const int threads =
      options.threads > 0 ? options.threads : std::max(1u, std::thread::hardware_concurrency());
  const std::unordered_map<std::string, std::string> kwargs = {
      {"model_type", options.model_type},
      {"vocab_size", std::to_string(options.vocab_size)},
      {"character_coverage", fmt::format("{:.9f}", coverage)},
      {"byte_fallback", "true"},
      {"split_digits", "true"},
      {"normalization_rule_name", "identity"},
      {"remove_extra_whitespaces", "false"},
      {"add_dummy_prefix", "false"},
      {"allow_whitespace_only_pieces", "true"},
      {"input_sentence_size", std::to_string(options.max_sentences)},
      {"shuffle_input_sentence", "true"},
      {"max_sentence_length", std::to_string(kMaxSentenceBytes)},
      {"num_threads", std::to_string(threads)},
      {"unk_id", "0"},
      {"bos_id", "1"},
      {"eos_id", "2"},
      {"pad_id", "-1"},
      {"hard_vocab_limit", "true"},
      {"minloglevel", "2"},  // SentencePiece's own INFO/WARNING lines off; kumiko logs instead
  };
  auto logger = log::get("data");
  logger->info("training a {} tokenizer: vocab {}, character coverage {}, {} threads",
               options.model_type, options.vocab_size, coverage, threads);
  sentencepiece::SetRandomGeneratorSeed(options.seed);
  LineIterator lines(options.texts);
  std::string model;
  const auto status = sentencepiece::SentencePieceTrainer::Train(kwargs, &lines, &model);
  KUMIKO_USER_CHECK(status.ok(), "tokenizer training failed for --vocab-size ", options.vocab_size,
                    " --model-type ", options.model_type, ": ", status.message());
  KUMIKO_CHECK(!model.empty(), "SentencePiece returned an empty model");
  return model;
}

}  // namespace kumiko::data
