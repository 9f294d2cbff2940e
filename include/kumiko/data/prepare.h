#pragma once
// prepare: text files -> tokenizer.model + token shards (docs/data-format.md).
// `kumiko prepare` is a thin wrapper over prepare().
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace kumiko::data {

struct PrepareOptions {
  std::vector<std::string> inputs;  // UTF-8 text files, one document each
  std::string out;                  // output folder (created)
  int vocab_size = 4096;
  std::string model_type = "bpe";  // bpe | unigram
  std::string tokenizer;           // reuse this .model instead of training one
  double val_fraction = 0.05;      // the last fraction of each input (whole lines) goes to val
  int64_t shard_tokens = 100'000'000;
  int threads = 0;                  // 0 = all cores
  double character_coverage = 0.0;  // 0 = automatic (see TokenizerTrainOptions)
  bool progress = true;             // show progress while encoding (core/progress.h)
};

struct PrepareSummary {
  int64_t input_bytes = 0;
  int64_t train_tokens = 0;
  int64_t val_tokens = 0;
  int64_t train_shards = 0;
  int64_t val_shards = 0;
  int64_t bytes_written = 0;  // shard bytes
  int vocab_size = 0;
  std::string tokenizer_sha256;
  double seconds = 0.0;
};

PrepareSummary prepare(const PrepareOptions& options);

// Text as prepare() sees it: a leading UTF-8 BOM removed, CRLF and lone CR turned into
// LF. UserError naming `path` when the bytes are not valid UTF-8.
std::string normalize_text(std::string bytes, const std::string& path);

// Byte offset where the validation part of `text` starts: the start of the first line
// at or after byte size * (1 - val_fraction); text.size() when val_fraction is 0.
size_t val_split_offset(std::string_view text, double val_fraction);

}  // namespace kumiko::data
