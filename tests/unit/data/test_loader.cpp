// Token shards and the Loader, on synthetic shards (no SentencePiece needed: the
// loader only hashes tokenizer.model).
#include "kumiko/data/loader.h"

#include <algorithm>
#include <numeric>
#include <set>
#include <vector>

#include <gtest/gtest.h>

#include "kumiko/core/rng.h"
#include "kumiko/core/sha256.h"
#include "kumiko/data/shard.h"
#include "test_util.h"

namespace kumiko::data {
namespace {

using test::ScratchDir;

std::vector<int32_t> random_tokens(size_t n, int vocab, uint64_t seed) {
  std::vector<int32_t> t(n);
  const uint64_t key = rng::stream_key(seed, "tokens");
  for (size_t i = 0; i < n; ++i) t[i] = static_cast<int32_t>(rng::philox(key, 0, i)[0] % vocab);
  return t;
}

// Writes tokenizer.model (arbitrary bytes) and the shards of both splits.
std::string make_folder(const ScratchDir& dir, const std::vector<int32_t>& train,
                        const std::vector<int32_t>& val, int vocab, int64_t shard_tokens,
                        const std::string& model_bytes = "fake tokenizer model bytes") {
  test::write_bytes(dir.file("tokenizer.model"), model_bytes);
  Sha256Digest sha = sha256(model_bytes);
  ShardWriter tw(dir.path().string(), SplitId::train, shard_tokens, vocab, sha);
  tw.append(train);
  tw.finish();
  ShardWriter vw(dir.path().string(), SplitId::val, shard_tokens, vocab, sha);
  vw.append(val);
  vw.finish();
  return dir.path().string();
}

TEST(Shard, WriteAndReadBack) {
  ScratchDir dir("shard_rw");
  for (int vocab : {1000, 70000}) {
    const auto tokens = random_tokens(2500, vocab, 3);
    Sha256Digest sha = sha256("x");
    ShardWriter w(dir.path().string(), SplitId::train, 1000, vocab, sha);
    w.append(std::span(tokens).subspan(0, 700));
    w.append(std::span(tokens).subspan(700));
    w.finish();
    EXPECT_EQ(w.shards_written(), 3);
    const int64_t width = vocab <= 65536 ? 2 : 4;
    EXPECT_EQ(w.bytes_written(), 3 * 256 + 2500 * width);
    std::vector<int32_t> back;
    for (uint32_t s = 0; s < 3; ++s) {
      MappedShard m(dir.file(shard_file_name(SplitId::train, s)));
      EXPECT_EQ(m.header().token_bytes, width);
      EXPECT_EQ(m.header().shard_index, s);
      EXPECT_EQ(m.header().tokenizer_sha256, sha);
      EXPECT_EQ(m.find_out_of_range(), -1);
      std::vector<int32_t> part(static_cast<size_t>(m.num_tokens()));
      m.read(0, m.num_tokens(), part.data());
      back.insert(back.end(), part.begin(), part.end());
    }
    EXPECT_EQ(back, tokens);
    EXPECT_FALSE(std::filesystem::exists(dir.file("train_000003.bin")));
    EXPECT_FALSE(std::filesystem::exists(dir.file("train_000002.bin.tmp")));
  }
}

TEST(Loader, PermutationIsABijection) {
  for (int64_t n : {1, 2, 3, 5, 16, 17, 1000, 4099}) {
    std::vector<int64_t> seen;
    for (int64_t i = 0; i < n; ++i) seen.push_back(permute_index(i, n, 42, 3));
    std::vector<int64_t> sorted = seen;
    std::sort(sorted.begin(), sorted.end());
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(sorted[i], i) << "n=" << n;
    if (n >= 16) {
      int64_t fixed = 0, other_epoch_same = 0;
      for (int64_t i = 0; i < n; ++i) {
        fixed += seen[i] == i;
        other_epoch_same += permute_index(i, n, 42, 4) == seen[i];
      }
      EXPECT_LT(fixed, n / 4) << "n=" << n;             // actually shuffled
      EXPECT_LT(other_epoch_same, n / 4) << "n=" << n;  // each epoch differs
    }
  }
}

class LoaderTest : public ::testing::Test {
 protected:
  static constexpr int kVocab = 3000;
  static constexpr int64_t kT = 16;
  void SetUp() override {
    train_ = random_tokens(5000, kVocab, 1);
    val_ = random_tokens(700, kVocab, 2);
    make_folder(dir_, train_, val_, kVocab, 1234);  // shards boundaries inside windows
  }
  ScratchDir dir_{"loader"};
  std::vector<int32_t> train_, val_;
};

TEST_F(LoaderTest, OpensAndReportsSizes) {
  Loader loader(dir_.path().string(), kT, 5);
  EXPECT_EQ(loader.vocab_size(), kVocab);
  EXPECT_EQ(loader.num_tokens(Split::train), 5000);
  EXPECT_EQ(loader.num_tokens(Split::val), 700);
  EXPECT_EQ(loader.num_windows(Split::train), (5000 - 1) / kT);
  EXPECT_EQ(loader.tokenizer_sha256(), sha256_hex("fake tokenizer model bytes"));
  EXPECT_EQ(loader.tokenizer_path(), dir_.file("tokenizer.model"));
}

TEST_F(LoaderTest, WindowsComeFromTheStreamAndTargetsAreShifted) {
  Loader loader(dir_.path().string(), kT, 5);
  const int64_t B = 8;
  std::vector<int32_t> x(B * kT, -1), y(B * kT, -1);  // [B, T]
  loader.fill(Split::train, 3, B, 0, B, x.data(), y.data());
  for (int64_t i = 0; i < B; ++i) {
    const int64_t w = loader.train_window(3 * B + i);
    for (int64_t t = 0; t < kT; ++t) {
      ASSERT_EQ(x[i * kT + t], train_[w * kT + t]);
      ASSERT_EQ(y[i * kT + t], train_[w * kT + t + 1]);
    }
  }
  // Validation windows are sequential and the same on every call.
  loader.fill(Split::val, 1, B, 0, B, x.data(), y.data());
  const int64_t nv = loader.num_windows(Split::val);
  for (int64_t i = 0; i < B; ++i)
    for (int64_t t = 0; t < kT; ++t) ASSERT_EQ(x[i * kT + t], val_[((B + i) % nv) * kT + t]);
}

TEST_F(LoaderTest, DeterministicAndPartitionInvariant) {
  Loader a(dir_.path().string(), kT, 11);
  Loader b(dir_.path().string(), kT, 11);
  Loader c(dir_.path().string(), kT, 12);
  const int64_t B = 12;
  std::vector<int32_t> xa(B * kT), ya(B * kT), xb(B * kT, -1), yb(B * kT, -1), xc(B * kT),
      yc(B * kT);
  for (int64_t step : {0, 7, 100}) {
    a.fill(Split::train, step, B, 0, B, xa.data(), ya.data());
    // Ranks / micro-batches: uneven slices concatenate to the whole global batch.
    const int64_t cuts[] = {0, 5, 6, 12};
    for (int k = 0; k < 3; ++k)
      b.fill(Split::train, step, B, cuts[k], cuts[k + 1] - cuts[k], xb.data() + cuts[k] * kT,
             yb.data() + cuts[k] * kT);
    EXPECT_EQ(xa, xb);
    EXPECT_EQ(ya, yb);
    c.fill(Split::train, step, B, 0, B, xc.data(), yc.data());
    EXPECT_NE(xa, xc) << "another seed should give another order";
  }
}

TEST_F(LoaderTest, EpochsVisitEveryWindowOnce) {
  Loader loader(dir_.path().string(), kT, 3);
  const int64_t n = loader.num_windows(Split::train);
  for (int64_t epoch = 0; epoch < 2; ++epoch) {
    std::set<int64_t> seen;
    for (int64_t i = 0; i < n; ++i) seen.insert(loader.train_window(epoch * n + i));
    EXPECT_EQ(static_cast<int64_t>(seen.size()), n);
  }
  EXPECT_NE(loader.train_window(0), loader.train_window(n));  // reshuffled (this seed)
}

TEST_F(LoaderTest, PositionSaveRestoreContinuesTheSequence) {
  const int64_t B = 4;
  Loader a(dir_.path().string(), kT, 9);
  std::vector<int32_t> x(B * kT), y(B * kT);
  std::vector<std::vector<int32_t>> reference;
  Loader::Position saved;
  for (int s = 0; s < 6; ++s) {
    if (s == 3) saved = a.position();
    a.next(B, 0, B, x.data(), y.data());
    reference.push_back(x);
  }
  EXPECT_EQ(saved.step, 3);
  Loader b(dir_.path().string(), kT, 9);
  b.restore(saved);
  for (int s = 3; s < 6; ++s) {
    b.next(B, 0, B, x.data(), y.data());
    EXPECT_EQ(x, reference[s]) << "step " << s;
  }
  EXPECT_EQ(b.position().step, 6);
  Loader other(dir_.path().string(), kT, 10);
  EXPECT_USER_ERROR(other.restore(saved), "seed 9", "seed 10");
}

TEST(Loader, OrderDoesNotDependOnShardSize) {
  const auto train = random_tokens(3000, 500, 4), val = random_tokens(100, 500, 5);
  ScratchDir one("loader_one"), many("loader_many");
  make_folder(one, train, val, 500, 1 << 20);
  make_folder(many, train, val, 500, 97);
  Loader a(one.path().string(), 32, 1), b(many.path().string(), 32, 1);
  std::vector<int32_t> xa(6 * 32), ya(6 * 32), xb(6 * 32), yb(6 * 32);
  for (int64_t step = 0; step < 30; ++step) {
    a.fill(Split::train, step, 6, 0, 6, xa.data(), ya.data());
    b.fill(Split::train, step, 6, 0, 6, xb.data(), yb.data());
    ASSERT_EQ(xa, xb);
    ASSERT_EQ(ya, yb);
  }
}

// ---- bad data -----------------------------------------------------------------------

class BadDataTest : public ::testing::Test {
 protected:
  void SetUp() override {
    make_folder(dir_, random_tokens(4000, 1000, 1), random_tokens(300, 1000, 2), 1000, 1500);
  }
  std::string shard(const std::string& name) const { return dir_.file(name); }
  void patch(const std::string& name, size_t offset, const std::string& bytes) {
    std::string b = test::read_bytes(shard(name));
    b.replace(offset, bytes.size(), bytes);
    test::write_bytes(shard(name), b);
  }
  ScratchDir dir_{"baddata"};
};

TEST_F(BadDataTest, GoodFolderOpens) { EXPECT_NO_THROW(Loader(dir_.path().string(), 8, 1)); }

TEST_F(BadDataTest, BadMagic) {
  patch("train_000001.bin", 0, "NOTKUMIK");
  EXPECT_USER_ERROR(Loader(dir_.path().string(), 8, 1), shard("train_000001.bin"), "magic");
}

TEST_F(BadDataTest, UnsupportedVersion) {
  patch("val_000000.bin", 8, std::string("\x07\x00\x00\x00", 4));
  EXPECT_USER_ERROR(Loader(dir_.path().string(), 8, 1), shard("val_000000.bin"), "version 7");
}

TEST_F(BadDataTest, TruncatedShard) {
  std::string b = test::read_bytes(shard("train_000002.bin"));
  test::write_bytes(shard("train_000002.bin"), b.substr(0, b.size() - 3));
  EXPECT_USER_ERROR(Loader(dir_.path().string(), 8, 1), shard("train_000002.bin"), "truncated");
  test::write_bytes(shard("train_000002.bin"), b.substr(0, 100));
  EXPECT_USER_ERROR(Loader(dir_.path().string(), 8, 1), shard("train_000002.bin"), "truncated");
}

TEST_F(BadDataTest, TokenOutsideTheVocabulary) {
  patch("train_000001.bin", 256 + 2 * 17, std::string("\xE8\x03", 2));  // 1000 = vocab
  EXPECT_USER_ERROR(Loader(dir_.path().string(), 8, 1), shard("train_000001.bin"), "token 1000",
                    "index 17");
}

TEST_F(BadDataTest, TokenizerHashMismatch) {
  test::write_bytes(dir_.file("tokenizer.model"), "differs");
  EXPECT_USER_ERROR(Loader(dir_.path().string(), 8, 1), shard("train_000000.bin"),
                    dir_.file("tokenizer.model"), "differs");
}

TEST_F(BadDataTest, MissingPieces) {
  std::filesystem::remove(shard("train_000001.bin"));
  EXPECT_USER_ERROR(Loader(dir_.path().string(), 8, 1), shard("train_000001.bin"), "missing");
  std::filesystem::remove(dir_.file("tokenizer.model"));
  EXPECT_USER_ERROR(Loader(dir_.path().string(), 8, 1), dir_.file("tokenizer.model"), "missing");
  EXPECT_USER_ERROR(Loader(dir_.file("nope"), 8, 1), dir_.file("nope"));
}

TEST_F(BadDataTest, SplitTooShortForTheSequenceLength) {
  EXPECT_USER_ERROR(Loader(dir_.path().string(), 4000, 1), "train split", "4001");
  Loader loader(dir_.path().string(), 400, 1);
  std::vector<int32_t> x(400), y(400);
  EXPECT_USER_ERROR(loader.fill(Split::val, 0, 1, 0, 1, x.data(), y.data()), "val split", "401");
}

}  // namespace
}  // namespace kumiko::data
