#include "kumiko/data/prepare.h"

#include <omp.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <thread>

#include "kumiko/core/error.h"
#include "kumiko/core/log.h"
#include "kumiko/core/progress.h"
#include "kumiko/core/sha256.h"
#include "kumiko/data/shard.h"
#include "kumiko/data/tokenizer.h"

namespace kumiko::data {
namespace fs = std::filesystem;

namespace {

constexpr size_t kChunkBytes = 256 * 1024;  // encoding unit, cut at line ends

// Offset of the first byte that is not part of a valid UTF-8 sequence, or npos.
size_t find_invalid_utf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    int len = 0;
    uint32_t min = 0;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xE0) == 0xC0) {
      len = 2, min = 0x80;
    } else if ((c & 0xF0) == 0xE0) {
      len = 3, min = 0x800;
    } else if ((c & 0xF8) == 0xF0) {
      len = 4, min = 0x10000;
    } else {
      return i;
    }
    if (i + len > s.size()) return i;
    uint32_t cp = c & (0x7F >> len);
    for (int k = 1; k < len; ++k) {
      const auto cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xC0) != 0x80) return i;
      cp = (cp << 6) | (cc & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return i;
    i += len;
  }
  return std::string_view::npos;
}

std::string read_file(const std::string& path) {
  KUMIKO_USER_CHECK(fs::is_regular_file(path), "--input '", path, "': no such file");
  std::ifstream in(path, std::ios::binary);
  KUMIKO_USER_CHECK(in.good(), "--input '", path, "': cannot open (", std::strerror(errno), ")");
  std::ostringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

// Writes `bytes` to `path` through a temporary file and a rename.
void write_atomically(const fs::path& path, std::string_view bytes) {
  const fs::path tmp = path.string() + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    out.flush();
    KUMIKO_USER_CHECK(out.good(), "cannot write '", tmp.string(), "'");
  }
  fs::rename(tmp, path);
}

// Removes the shards, manifest and temporaries of an earlier prepare in `dir`.
void remove_previous_output(const fs::path& dir) {
  const std::regex pattern(
      "((train|val)_[0-9]{6}\\.bin|manifest\\.json|tokenizer\\.model)(\\.tmp)?");
  int removed = 0;
  for (const auto& entry : fs::directory_iterator(dir)) {
    if (std::regex_match(entry.path().filename().string(), pattern)) {
      fs::remove(entry.path());
      ++removed;
    }
  }
  if (removed > 0)
    log::get("data")->warn("'{}': removed {} file(s) of an earlier prepare", dir.string(), removed);
}

// Cuts `text` into pieces of about kChunkBytes ending at line ends.
std::vector<std::string_view> chunk_lines(std::string_view text) {
  std::vector<std::string_view> chunks;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = std::min(text.size(), pos + kChunkBytes);
    if (end < text.size()) {
      const size_t nl = text.find('\n', end - 1);
      end = nl == std::string_view::npos ? text.size() : nl + 1;
    }
    chunks.push_back(text.substr(pos, end - pos));
    pos = end;
  }
  return chunks;
}

std::string json_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    if (static_cast<unsigned char>(c) < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\u%04x", c);
      out += buf;
    } else {
      out += c;
    }
  }
  return out;
}

}  // namespace

std::string normalize_text(std::string bytes, const std::string& path) {
  if (bytes.starts_with("\xEF\xBB\xBF")) bytes.erase(0, 3);
  std::string out;
  out.reserve(bytes.size());
  for (size_t i = 0; i < bytes.size(); ++i) {
    if (bytes[i] == '\r') {
      out += '\n';
      if (i + 1 < bytes.size() && bytes[i + 1] == '\n') ++i;
    } else {
      out += bytes[i];
    }
  }
  const size_t bad = find_invalid_utf8(out);
  KUMIKO_USER_CHECK(bad == std::string::npos, "--input '", path,
                    "': not valid UTF-8 (first bad byte at offset ", bad,
                    " after BOM/CRLF removal)");
  return out;
}

size_t val_split_offset(std::string_view text, double val_fraction) {
  if (val_fraction <= 0 || text.empty()) return text.size();
  const auto target =
      static_cast<size_t>(std::floor(static_cast<double>(text.size()) * (1.0 - val_fraction)));
  if (target == 0) return 0;
  const size_t nl = text.find('\n', target - 1);
  return nl == std::string_view::npos ? text.size() : nl + 1;
}

PrepareSummary prepare(const PrepareOptions& o) {
  const auto t0 = std::chrono::steady_clock::now();
  auto logger = log::get("data");
  KUMIKO_USER_CHECK(!o.inputs.empty(), "--input: give at least one text file");
  KUMIKO_USER_CHECK(!o.out.empty(), "--out: give the output folder");
  KUMIKO_USER_CHECK(o.val_fraction >= 0 && o.val_fraction < 1,
                    "--val-fraction: expected a value in [0, 1), got ", o.val_fraction);
  KUMIKO_USER_CHECK(o.shard_tokens > 0, "--shard-tokens: expected a positive count, got ",
                    o.shard_tokens);
  KUMIKO_USER_CHECK(o.threads >= 0, "--threads: expected >= 0 (0 = all cores), got ", o.threads);
  if (o.tokenizer.empty()) {
    KUMIKO_USER_CHECK(o.model_type == "bpe" || o.model_type == "unigram",
                      "--model-type: expected bpe or unigram, got '", o.model_type, "'");
    KUMIKO_USER_CHECK(o.vocab_size >= kMinVocabSize && o.vocab_size <= kMaxVocabSize,
                      "--vocab-size: expected a value in [", kMinVocabSize, ", ", kMaxVocabSize,
                      "] (byte fallback needs 256 byte pieces), got ", o.vocab_size);
  } else {
    KUMIKO_USER_CHECK(fs::is_regular_file(o.tokenizer), "--tokenizer '", o.tokenizer,
                      "': no such file");
  }
  const int threads = o.threads > 0
                          ? o.threads
                          : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));

  // 1. Read the inputs and split each into its train and val part.
  std::vector<std::string> docs;
  std::vector<size_t> splits;
  PrepareSummary summary;
  for (const std::string& path : o.inputs) {
    docs.push_back(normalize_text(read_file(path), path));
    KUMIKO_USER_CHECK(docs.back().find_first_not_of(" \t\n") != std::string::npos, "--input '",
                      path, "': the file is empty (no text to tokenize)");
    splits.push_back(val_split_offset(docs.back(), o.val_fraction));
    summary.input_bytes += static_cast<int64_t>(docs.back().size());
  }

  // 2. The tokenizer: trained on the train parts, or copied from --tokenizer.
  KUMIKO_USER_CHECK(!fs::exists(o.out) || fs::is_directory(o.out), "--out '", o.out,
                    "': exists and is not a folder");
  std::string reused_model;  // read before the folder is cleaned: it may live in --out
  if (!o.tokenizer.empty()) {
    const Tokenizer check = Tokenizer::load(o.tokenizer);  // validates before copying
    reused_model = read_file(o.tokenizer);
  }
  fs::create_directories(o.out);
  remove_previous_output(o.out);
  const fs::path model_path = fs::path(o.out) / "tokenizer.model";
  if (o.tokenizer.empty()) {
    TokenizerTrainOptions t;
    for (size_t i = 0; i < docs.size(); ++i)
      t.texts.push_back(std::string_view(docs[i]).substr(0, splits[i]));
    t.vocab_size = o.vocab_size;
    t.model_type = o.model_type;
    t.character_coverage = o.character_coverage;
    t.threads = threads;
    write_atomically(model_path, train_tokenizer(t));
  } else {
    write_atomically(model_path, reused_model);
  }
  const Tokenizer tokenizer = Tokenizer::load(model_path.string());
  KUMIKO_USER_CHECK(tokenizer.eos_id() >= 0, "tokenizer '", model_path.string(), "' has no eos id");
  summary.vocab_size = tokenizer.vocab_size();
  summary.tokenizer_sha256 = tokenizer.sha256();
  Sha256Digest sha{};
  from_hex(tokenizer.sha256(), sha);

  // 3. Encode every part in line-aligned chunks on all threads, in order, into shards.
  ShardWriter train(o.out, SplitId::train, o.shard_tokens, summary.vocab_size, sha);
  ShardWriter val(o.out, SplitId::val, o.shard_tokens, summary.vocab_size, sha);
  const int32_t eos = tokenizer.eos_id();
  ProgressOptions progress_options;
  progress_options.subsystem = "data";
  if (!o.progress) progress_options.mode = ProgressMode::off;
  Progress progress("prepare: encoding", summary.input_bytes, "B", progress_options);
  for (size_t d = 0; d < docs.size(); ++d) {
    const std::string_view doc = docs[d];
    for (int part = 0; part < 2; ++part) {
      const std::string_view text = part == 0 ? doc.substr(0, splits[d]) : doc.substr(splits[d]);
      if (text.empty()) continue;
      ShardWriter& writer = part == 0 ? train : val;
      const std::vector<std::string_view> chunks = chunk_lines(text);
      const size_t batch = static_cast<size_t>(threads) * 4;
      std::vector<std::vector<int32_t>> encoded(batch);
      for (size_t c0 = 0; c0 < chunks.size(); c0 += batch) {
        const auto n = static_cast<int64_t>(std::min(batch, chunks.size() - c0));
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
        for (int64_t i = 0; i < n; ++i) {
          encoded[i] = tokenizer.encode(chunks[c0 + i]);
          progress.advance(static_cast<int64_t>(chunks[c0 + i].size()));
        }
        for (int64_t i = 0; i < n; ++i) writer.append(encoded[i]);
      }
      writer.append(std::span<const int32_t>(&eos, 1));  // a document ends with eos
    }
  }
  train.finish();
  val.finish();
  progress.finish();
  summary.train_tokens = train.tokens_written();
  summary.val_tokens = val.tokens_written();
  summary.train_shards = train.shards_written();
  summary.val_shards = val.shards_written();
  summary.bytes_written = train.bytes_written() + val.bytes_written();

  // 4. A manifest for people and scripts (the loader reads only the shards).
  std::ostringstream m;
  m << "{\n  \"format_version\": " << kShardVersion << ",\n  \"tokenizer\": \"tokenizer.model\",\n"
    << "  \"tokenizer_sha256\": \"" << summary.tokenizer_sha256 << "\",\n"
    << "  \"vocab_size\": " << summary.vocab_size << ",\n  \"eos_id\": " << eos << ",\n"
    << "  \"token_bytes\": " << token_bytes_for_vocab(summary.vocab_size) << ",\n"
    << "  \"val_fraction\": " << o.val_fraction << ",\n  \"shard_tokens\": " << o.shard_tokens
    << ",\n"
    << "  \"train\": {\"tokens\": " << summary.train_tokens
    << ", \"shards\": " << summary.train_shards
    << "},\n  \"val\": {\"tokens\": " << summary.val_tokens
    << ", \"shards\": " << summary.val_shards << "},\n  \"inputs\": [";
  for (size_t i = 0; i < o.inputs.size(); ++i)
    m << (i ? ",\n" : "\n") << "    {\"path\": \"" << json_escape(o.inputs[i])
      << "\", \"sha256\": \"" << sha256_file(o.inputs[i])
      << "\", \"bytes\": " << fs::file_size(o.inputs[i]) << "}";
  m << "\n  ]\n}\n";
  write_atomically(fs::path(o.out) / "manifest.json", m.str());

  summary.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (summary.val_tokens == 0 && o.val_fraction > 0)
    logger->warn("the val split is empty: the inputs have too few lines for --val-fraction {}",
                 o.val_fraction);
  logger->info(
      "prepared '{}': train {} tokens ({} shards), val {} tokens ({} shards), {} bytes, {:.1f} s",
      o.out, summary.train_tokens, summary.train_shards, summary.val_tokens, summary.val_shards,
      summary.bytes_written, summary.seconds);
  return summary;
}

}  // namespace kumiko::data
