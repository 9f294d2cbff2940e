#include "kumiko/data/prepare.h"

#include <filesystem>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "kumiko/core/sha256.h"
#include "kumiko/data/loader.h"
#include "kumiko/data/shard.h"
#include "kumiko/data/tokenizer.h"
#include "test_util.h"

namespace kumiko::data {
namespace {

using test::ScratchDir;

std::vector<int32_t> read_split(const std::string& dir, SplitId split) {
  std::vector<int32_t> all;
  for (uint32_t i = 0;; ++i) {
    const std::string path = dir + "/" + shard_file_name(split, i);
    if (!std::filesystem::exists(path)) break;
    MappedShard m(path);
    std::vector<int32_t> part(static_cast<size_t>(m.num_tokens()));
    m.read(0, m.num_tokens(), part.data());
    all.insert(all.end(), part.begin(), part.end());
  }
  return all;
}

// Decodes a split document by document (documents end with eos).
std::vector<std::string> decode_documents(const Tokenizer& t, const std::vector<int32_t>& ids) {
  std::vector<std::string> docs;
  std::vector<int32_t> current;
  for (int32_t id : ids) {
    if (id == t.eos_id()) {
      docs.push_back(t.decode(current));
      current.clear();
    } else {
      current.push_back(id);
    }
  }
  EXPECT_TRUE(current.empty()) << "a split must end with eos";
  return docs;
}

TEST(Prepare, NormalizeAndSplit) {
  EXPECT_EQ(normalize_text("\xEF\xBB\xBFline one\r\nline two\rthree\n", "x"),
            "line one\nline two\nthree\n");
  EXPECT_USER_ERROR(normalize_text("ok \xC3\x28 bad", "in.txt"), "in.txt", "UTF-8", "offset 3");
  const std::string text = "aaaa\nbbbb\ncccc\ndddd\n";  // 20 bytes, 4 lines
  EXPECT_EQ(val_split_offset(text, 0.0), 20u);
  EXPECT_EQ(val_split_offset(text, 0.25), 15u);
  EXPECT_EQ(val_split_offset(text, 0.3), 15u);  // byte 14 lies inside line 3
  EXPECT_EQ(val_split_offset(text, 0.5), 10u);
  EXPECT_EQ(val_split_offset(text, 0.01), 20u);
}

TEST(Prepare, EndToEndWithTheLoader) {
  ScratchDir dir("prepare");
  // Botchan-like input: BOM + CRLF; and a Japanese slice.
  std::string english = test::corpus("tinyshakespeare.txt", 100'000);
  english.resize(english.rfind('\n') + 1);
  std::string crlf = "\xEF\xBB\xBF";
  for (char c : english) crlf += c == '\n' ? std::string("\r\n") : std::string(1, c);
  std::string japanese = test::corpus("wagahaiwa_nekodearu.txt", 100'000);
  japanese.resize(japanese.rfind('\n') + 1);
  test::write_bytes(dir.file("en.txt"), crlf);
  test::write_bytes(dir.file("ja.txt"), japanese);

  PrepareOptions o;
  o.inputs = {dir.file("en.txt"), dir.file("ja.txt")};
  o.out = dir.file("out");
  o.vocab_size = 1000;
  o.val_fraction = 0.1;
  o.shard_tokens = 20'000;
  o.threads = 2;
  const PrepareSummary s = prepare(o);
  EXPECT_EQ(s.vocab_size, 1000);
  EXPECT_GT(s.train_shards, 1);
  EXPECT_GE(s.val_shards, 1);
  EXPECT_GT(s.val_tokens * 20, s.train_tokens / 20);
  EXPECT_TRUE(std::filesystem::exists(dir.file("out/manifest.json")));
  for (const auto& e : std::filesystem::directory_iterator(dir.file("out")))
    EXPECT_NE(e.path().extension(), ".tmp") << e.path();

  // The shards decode back to the normalized text, split per document.
  const Tokenizer t = Tokenizer::load(dir.file("out/tokenizer.model"));
  EXPECT_EQ(t.sha256(), s.tokenizer_sha256);
  const std::string en = normalize_text(crlf, "en");
  const std::string ja = normalize_text(japanese, "ja");
  const size_t en_cut = val_split_offset(en, 0.1), ja_cut = val_split_offset(ja, 0.1);
  const auto train = decode_documents(t, read_split(o.out, SplitId::train));
  const auto val = decode_documents(t, read_split(o.out, SplitId::val));
  ASSERT_EQ(train.size(), 2u);
  ASSERT_EQ(val.size(), 2u);
  EXPECT_EQ(train[0], en.substr(0, en_cut));
  EXPECT_EQ(val[0], en.substr(en_cut));
  EXPECT_EQ(train[1], ja.substr(0, ja_cut));
  EXPECT_EQ(val[1], ja.substr(ja_cut));

  Loader loader(o.out, 64, 1);
  EXPECT_EQ(loader.vocab_size(), 1000);
  EXPECT_EQ(loader.num_tokens(Split::train), s.train_tokens);
  EXPECT_EQ(loader.num_tokens(Split::val), s.val_tokens);
  EXPECT_EQ(loader.tokenizer_sha256(), s.tokenizer_sha256);

  // Reusing the tokenizer (and one thread) gives the same shards.
  PrepareOptions again = o;
  again.out = dir.file("again");
  again.tokenizer = dir.file("out/tokenizer.model");
  again.threads = 1;
  again.shard_tokens = 1'000'000;
  const PrepareSummary s2 = prepare(again);
  EXPECT_EQ(s2.tokenizer_sha256, s.tokenizer_sha256);
  EXPECT_EQ(s2.train_shards, 1);
  EXPECT_EQ(read_split(again.out, SplitId::train), read_split(o.out, SplitId::train));
  EXPECT_EQ(read_split(again.out, SplitId::val), read_split(o.out, SplitId::val));

  // Re-preparing in place with the folder's own tokenizer keeps it.
  again.tokenizer = again.out + "/tokenizer.model";
  EXPECT_EQ(prepare(again).tokenizer_sha256, s.tokenizer_sha256);
}

TEST(Prepare, UserErrors) {
  ScratchDir dir("prepare_errors");
  test::write_bytes(dir.file("small.txt"), test::corpus("tinyshakespeare.txt", 20'000));
  test::write_bytes(dir.file("empty.txt"), "");
  PrepareOptions o;
  o.out = dir.file("out");
  o.threads = 2;
  o.inputs = {dir.file("missing.txt")};
  EXPECT_USER_ERROR(prepare(o), dir.file("missing.txt"), "no such file");
  o.inputs = {dir.file("small.txt"), dir.file("empty.txt")};
  EXPECT_USER_ERROR(prepare(o), dir.file("empty.txt"), "empty");
  o.inputs = {dir.file("small.txt")};
  o.vocab_size = 50;
  EXPECT_USER_ERROR(prepare(o), "--vocab-size", "50");
  o.vocab_size = 2'000'000;
  EXPECT_USER_ERROR(prepare(o), "--vocab-size", "2000000");
  o.vocab_size = 60'000;  // valid in general, too many for 20 KB of text
  EXPECT_USER_ERROR(prepare(o), "--vocab-size", "60000");
  o.vocab_size = 512;
  o.val_fraction = 1.5;
  EXPECT_USER_ERROR(prepare(o), "--val-fraction");
  o.val_fraction = 0.05;
  o.tokenizer = dir.file("none.model");
  EXPECT_USER_ERROR(prepare(o), dir.file("none.model"));
}

}  // namespace
}  // namespace kumiko::data
