#include "kumiko/data/tokenizer.h"

#include <memory>
#include <string>

#include <gtest/gtest.h>

#include "kumiko/core/sha256.h"
#include "test_util.h"

namespace kumiko::data {
namespace {

using test::ScratchDir;

// One small tokenizer (English + Japanese slices, vocab 1000) shared by the tests.
class TokenizerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new ScratchDir("tokenizer");
    english_ = new std::string(test::corpus("tinyshakespeare.txt", 150'000));
    japanese_ = new std::string(test::corpus("wagahaiwa_nekodearu.txt", 150'000));
    // Cut the Japanese slice at a line end so that it stays valid UTF-8.
    japanese_->resize(japanese_->rfind('\n') + 1);
    TokenizerTrainOptions o;
    o.texts = {*english_, *japanese_};
    o.vocab_size = 1000;
    o.threads = 2;
    test::write_bytes(dir_->file("t.model"), train_tokenizer(o));
  }
  static void TearDownTestSuite() {
    delete dir_;
    delete english_;
    delete japanese_;
  }
  static Tokenizer load() { return Tokenizer::load(dir_->file("t.model")); }

  static ScratchDir* dir_;
  static std::string* english_;
  static std::string* japanese_;
};
ScratchDir* TokenizerTest::dir_ = nullptr;
std::string* TokenizerTest::english_ = nullptr;
std::string* TokenizerTest::japanese_ = nullptr;

TEST_F(TokenizerTest, Basics) {
  const Tokenizer t = load();
  EXPECT_EQ(t.vocab_size(), 1000);
  EXPECT_EQ(t.eos_id(), 2);
  EXPECT_EQ(t.sha256(), sha256_file(dir_->file("t.model")));
  // Training is deterministic: the same text gives the same model bytes.
  TokenizerTrainOptions o;
  o.texts = {*english_, *japanese_};
  o.vocab_size = 1000;
  o.threads = 2;
  EXPECT_EQ(sha256_hex(train_tokenizer(o)), t.sha256());
}

TEST_F(TokenizerTest, RoundTripsTheCorpora) {
  const Tokenizer t = load();
  for (const std::string* text : {english_, japanese_}) {
    const std::string slice = text->substr(0, text->find('\n', 20'000) + 1);  // whole lines
    const auto ids = t.encode(slice);
    EXPECT_LT(ids.size() * 3, slice.size() * 2) << "the tokenizer should merge bytes";
    EXPECT_EQ(t.decode(ids), slice);
  }
}

TEST_F(TokenizerTest, RoundTripsUnseenCharactersThroughBytes) {
  const Tokenizer t = load();
  const std::string texts[] = {
      "Emoji 🐈‍⬛ and 😺, rare kanji 𠮷野家 and 鬱, Cyrillic кот, tabs\tand  double  "
      "spaces\n",
      "  leading spaces, trailing spaces  \n\n\nblank lines and digits 1234567890\n",
      "吾輩は猫である。名前はまだ無い。🍣",
  };
  for (const std::string& text : texts) {
    const auto ids = t.encode(text);
    for (int32_t id : ids) EXPECT_NE(id, 0) << "no <unk>: byte fallback covers everything";
    EXPECT_EQ(t.decode(ids), text);
  }
}

TEST_F(TokenizerTest, Errors) {
  const Tokenizer t = load();
  const std::vector<int32_t> bad = {5, 1000};
  EXPECT_USER_ERROR(t.decode(bad), dir_->file("t.model"), "1000");
  EXPECT_USER_ERROR(Tokenizer::load(dir_->file("missing.model")), dir_->file("missing.model"));
  test::write_bytes(dir_->file("garbage.model"), "this is not a protobuf \x01\x02\xff");
  EXPECT_USER_ERROR(Tokenizer::load(dir_->file("garbage.model")), dir_->file("garbage.model"));
  TokenizerTrainOptions o;
  o.texts = {*english_};
  o.vocab_size = 100;
  EXPECT_USER_ERROR(train_tokenizer(o), "--vocab-size", "100");
  o.vocab_size = 800;
  o.model_type = "wordpiece";
  EXPECT_USER_ERROR(train_tokenizer(o), "--model-type", "wordpiece");
}

TEST(TokenizerUnigram, TrainsAndRoundTripsJapanese) {
  std::string text = test::corpus("wagahaiwa_nekodearu.txt", 40'000);
  text.resize(text.rfind('\n') + 1);
  TokenizerTrainOptions o;
  o.texts = {text};
  o.vocab_size = 1200;
  o.model_type = "unigram";
  o.threads = 2;
  ScratchDir dir("tokenizer_unigram");
  test::write_bytes(dir.file("u.model"), train_tokenizer(o));
  const Tokenizer t = Tokenizer::load(dir.file("u.model"));
  EXPECT_EQ(t.vocab_size(), 1200);
  const std::string sample = text.substr(0, text.find('\n', 3000) + 1) + "𠮷🐈";
  EXPECT_EQ(t.decode(t.encode(sample)), sample);
}

}  // namespace
}  // namespace kumiko::data
