// The files users read: docs/config.md documents every key, and every configs/*.ini
// parses, validates and describes the model it is named after.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "config_test_util.h"

namespace kumiko::config {
namespace {

using testing::parse;
using testing::validation_error;

const std::filesystem::path kRoot = KUMIKO_SOURCE_DIR;

std::string read_text(const std::filesystem::path& path) {
  std::ifstream in(path);
  EXPECT_TRUE(in.good()) << path;
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

TEST(ConfigDocs, EveryKeyIsDocumented) {
  const std::string doc = read_text(kRoot / "docs" / "config.md");
  ASSERT_FALSE(doc.empty());
  for (const std::string& key : all_keys())
    EXPECT_NE(doc.find("`" + key + "`"), std::string::npos)
        << key << " is missing from docs/config.md";
}

// Each shipped config: parses, validates, round-trips through to_ini.
std::map<std::string, Config> load_all_configs() {
  std::map<std::string, Config> configs;
  for (const auto& entry : std::filesystem::directory_iterator(kRoot / "configs")) {
    if (entry.path().extension() != ".ini") continue;
    Config c;
    EXPECT_EQ(parse(c, {"--config", entry.path().string()}), "") << entry.path();
    EXPECT_EQ(validation_error(c), "") << entry.path();
    configs[entry.path().filename().string()] = c;
  }
  return configs;
}

TEST(ConfigFiles, EveryShippedConfigParsesAndValidates) {
  const auto configs = load_all_configs();
  for (const char* name : {"tiny.ini", "tiny-llama.ini", "gpt2-124m.ini", "llama-1b.ini"})
    EXPECT_EQ(configs.count(name), 1u) << name;
  for (const auto& [name, c] : configs) {
    testing::TempIni ini(to_ini(c));
    Config back;
    ASSERT_EQ(parse(back, {"--config", ini.path()}), "") << name;
    EXPECT_EQ(to_ini(back).substr(to_ini(back).find('\n')), to_ini(c).substr(to_ini(c).find('\n')))
        << name;
  }
}

TEST(ConfigFiles, ShippedConfigsDescribeTheirModels) {
  auto configs = load_all_configs();
  const Config& tiny = configs["tiny.ini"];
  EXPECT_EQ(tiny.model.arch, "gpt2");
  EXPECT_EQ(tiny.model.ff_dim(), 512);
  EXPECT_EQ(tiny.data.seq_len, 128);
  EXPECT_EQ(tiny.train.steps, 600);
  EXPECT_DOUBLE_EQ(tiny.train.lr, 3e-3);
  EXPECT_EQ(tiny.log.run_dir, "runs/tiny");
  const Config& tiny_llama = configs["tiny-llama.ini"];
  EXPECT_EQ(tiny_llama.model.arch, "llama");
  EXPECT_EQ(tiny_llama.model.kv_heads(), 2);
  EXPECT_FALSE(tiny_llama.model.tie_embeddings);
  EXPECT_EQ(estimate_params(configs["gpt2-124m.ini"].model), 124475904);
  EXPECT_EQ(estimate_params(configs["llama-1b.ini"].model), 1100048384);
}

}  // namespace
}  // namespace kumiko::config
