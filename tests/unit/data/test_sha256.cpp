#include "kumiko/core/sha256.h"

#include <string>

#include <gtest/gtest.h>

#include "kumiko/core/rng.h"
#include "test_util.h"

namespace kumiko {
namespace {

TEST(Sha256, KnownVectors) {  // FIPS 180-4 / NIST examples
  EXPECT_EQ(sha256_hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(sha256_hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(sha256_hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  EXPECT_EQ(sha256_hex(std::string(1000000, 'a')),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
  // 55, 56 and 64 bytes straddle the padding boundary.
  EXPECT_EQ(sha256_hex(std::string(55, 'a')),
            "9f4390f8d30c2dd92ec9f095b65e2b9ae9b0a925a5258e241c9f1e910f734318");
  EXPECT_EQ(sha256_hex(std::string(56, 'a')),
            "b35439a4ac6f0948b6d6f9e3c6af0f5f590ce20f1bde7090ef7970686ec6738a");
  EXPECT_EQ(sha256_hex(std::string(64, 'a')),
            "ffe054fe7ae0cb6dc65c3af9b61d5209f439851db43d0ba5997337df154668eb");
}

TEST(Sha256, IncrementalEqualsOneShot) {
  std::string bytes(10007, '\0');
  const uint64_t key = rng::stream_key(7, "sha");
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<char>(rng::philox(key, 0, i)[0]);
  Sha256 h;
  size_t pos = 0;
  for (size_t step = 1; pos < bytes.size(); step = step * 3 % 97 + 1) {
    const size_t n = std::min(step, bytes.size() - pos);
    h.update(bytes.data() + pos, n);
    pos += n;
  }
  EXPECT_EQ(to_hex(h.digest()), sha256_hex(bytes));
  Sha256Digest parsed{};
  ASSERT_TRUE(from_hex(sha256_hex(bytes), parsed));
  EXPECT_EQ(parsed, sha256(bytes));
  EXPECT_FALSE(from_hex("zz", parsed));
}

TEST(Sha256, File) {
  data::test::ScratchDir dir("sha256");
  data::test::write_bytes(dir.file("abc.txt"), "abc");
  EXPECT_EQ(sha256_file(dir.file("abc.txt")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_USER_ERROR(sha256_file(dir.file("missing.txt")), dir.file("missing.txt"));
}

}  // namespace
}  // namespace kumiko
