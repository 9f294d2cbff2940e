// Parsing INI files and command lines, every parse error message, the INI round trip and
// validate()'s checks.
#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <set>

#include "config_test_util.h"
#include "kumiko/config/load.h"

namespace kumiko::config {
namespace {

using testing::parse;
using testing::TempIni;
using testing::validation_error;

constexpr const char* kSample = R"(# a comment line
; another comment line
[model]
arch = llama
n_layers = 6          # inline comment
n_heads = 8 ; inline comment, INI style
n_kv_heads = 2
d_model = 256
tie_embeddings = false
norm_eps = 1e-6

[data]
dir = "my data/shards"

[train]
lr = 3e-3
steps = +250
seed = 18446744073709551615
decay = linear

[log]
all_ranks = yes
)";

TEST(ConfigParse, ReadsSectionsIntoFields) {
  TempIni ini(kSample);
  Config c;
  ASSERT_EQ(parse(c, {"--config", ini.path()}), "");
  EXPECT_EQ(c.model.arch, "llama");
  EXPECT_EQ(c.model.n_layers, 6);
  EXPECT_EQ(c.model.n_heads, 8);
  EXPECT_EQ(c.model.kv_heads(), 2);
  EXPECT_EQ(c.model.d_model, 256);
  EXPECT_EQ(c.model.head_dim(), 32);
  EXPECT_EQ(c.model.ff_dim(), 1024);
  EXPECT_FALSE(c.model.tie_embeddings);
  EXPECT_DOUBLE_EQ(c.model.norm_eps, 1e-6);
  EXPECT_EQ(c.data.dir, "my data/shards");
  EXPECT_DOUBLE_EQ(c.train.lr, 3e-3);
  EXPECT_EQ(c.train.steps, 250);
  EXPECT_EQ(c.train.seed, 18446744073709551615ull);
  EXPECT_EQ(c.train.decay, "linear");
  EXPECT_TRUE(c.log.all_ranks);
  EXPECT_EQ(c.train.micro_batch, Config{}.train.micro_batch);  // untouched keys keep defaults
  EXPECT_EQ(c.source_file, ini.path());
  EXPECT_EQ(c.file_keys.size(), 13u);
  EXPECT_EQ(validation_error(c), "");
}

TEST(ConfigParse, CommandLineWinsOverFile) {
  TempIni ini(kSample);
  for (bool cli_first : {true, false}) {
    Config c;
    std::vector<std::string> args = {"--train.lr=1e-2", "--model.n_layers", "3"};
    args.insert(cli_first ? args.end() : args.begin(), {"--config", ini.path()});
    ASSERT_EQ(parse(c, args), "");
    EXPECT_DOUBLE_EQ(c.train.lr, 1e-2);
    EXPECT_EQ(c.model.n_layers, 3);
    EXPECT_EQ(c.model.n_heads, 8);  // from the file
    EXPECT_EQ(std::count(c.file_keys.begin(), c.file_keys.end(), "train.lr"), 0);
    EXPECT_EQ(std::count(c.file_keys.begin(), c.file_keys.end(), "model.n_heads"), 1);
  }
}

TEST(ConfigParse, CommandLineWithoutFile) {
  Config c;
  ASSERT_EQ(parse(c, {"--parallel.dp=2", "--backend.device", "cuda", "--data.synthetic=true"}), "");
  EXPECT_EQ(c.parallel.dp, 2);
  EXPECT_EQ(c.backend.device, "cuda");
  EXPECT_TRUE(c.data.synthetic);
  EXPECT_EQ(c.source_file, "");
  EXPECT_TRUE(c.file_keys.empty());
}

TEST(ConfigParse, RepeatedKeyTakesLastValue) {
  TempIni ini(kSample);
  Config c;
  ASSERT_EQ(parse(c, {"--log.run_dir=runs/a", "--config", ini.path(), "--train.lr=1e-2",
                      "--log.run_dir", "runs/b", "--train.lr=2e-2"}),
            "");
  EXPECT_EQ(c.log.run_dir, "runs/b");
  EXPECT_DOUBLE_EQ(c.train.lr, 2e-2);
  // Every value is still checked, not only the one that is kept.
  Config bad;
  EXPECT_NE(parse(bad, {"--train.steps=abc", "--train.steps=10"}).find("--train.steps"),
            std::string::npos);
}

// ---- errors in the file: every message names the file ---------------------------------

std::string file_error(const std::string& text) {
  TempIni ini(text);
  Config c;
  std::string message = parse(c, {"--config", ini.path()});
  EXPECT_EQ(message.rfind(ini.path() + ": ", 0), 0u) << message;  // starts with the file
  return message.substr(std::min(message.size(), ini.path().size() + 2));
}

TEST(ConfigErrors, UnknownKeySuggestsNearest) {
  EXPECT_EQ(file_error("[train]\nlrr = 1e-3\n"),
            "unknown key 'train.lrr' (did you mean 'train.lr'?)");
  EXPECT_EQ(file_error("[model]\nlr = 1e-3\n"),
            "unknown key 'model.lr' (did you mean 'train.lr'?)");
  EXPECT_EQ(file_error("[model]\nnlayers = 2\n"),
            "unknown key 'model.nlayers' (did you mean 'model.n_layers'?)");
  EXPECT_EQ(file_error("lr = 1e-3\n"),
            "unknown key 'lr' outside any [section] (did you mean 'train.lr'?)");
  EXPECT_EQ(file_error("[train]\ncompletely_unrelated_name = 1\n"),
            "unknown key 'train.completely_unrelated_name' (docs/config.md lists every key)");
}

TEST(ConfigErrors, UnknownSection) {
  EXPECT_EQ(file_error("[trian]\nlr = 1\n"), "unknown section [trian] (did you mean [train]?)");
  EXPECT_EQ(file_error("[model]\nn_layers = 2\n[optimizer]\n"),
            "unknown section [optimizer] (sections: [model] [data] [train] [parallel] [backend] "
            "[checkpoint] [log])");
}

TEST(ConfigErrors, WrongTypes) {
  EXPECT_EQ(file_error("[train]\nsteps = abc\n"), "train.steps: expected an integer, got 'abc'");
  EXPECT_EQ(file_error("[train]\nsteps = 1e4\n"), "train.steps: expected an integer, got '1e4'");
  EXPECT_EQ(file_error("[train]\nlr = fast\n"), "train.lr: expected a number, got 'fast'");
  EXPECT_EQ(file_error("[model]\ntie_embeddings = maybe\n"),
            "model.tie_embeddings: expected true or false, got 'maybe'");
  EXPECT_EQ(file_error("[model]\narch = gtp2\n"),
            "model.arch: expected one of gpt2|llama, got 'gtp2'");
  EXPECT_EQ(file_error("[model]\nn_layers = 3000000000\n"),
            "model.n_layers: expected an integer in [-2147483648, 2147483647], got '3000000000'");
  EXPECT_EQ(file_error("[train]\nseed = -1\n"),
            "train.seed: expected a non-negative integer, got '-1'");
  EXPECT_EQ(file_error("[parallel]\nzero = 2\n"), "parallel.zero: expected one of 0|1, got '2'");
  EXPECT_EQ(file_error("[train]\nsteps =\n"), "train.steps: expected an integer, got ''");
}

TEST(ConfigErrors, OneValuePerKey) {
  EXPECT_EQ(file_error("[data]\ndir = my data\n"),
            "data.dir: expected one value, got 'my data' (a key given twice, or a value with "
            "spaces or commas: quote it)");
  EXPECT_EQ(file_error("[train]\nlr = 1\nsteps = 2\nlr = 3\n"), "duplicate key 'train.lr'");
}

TEST(ConfigErrors, MissingFile) {
  TempIni ini("");
  const std::string missing = ini.path() + ".nope";
  Config c;
  EXPECT_EQ(parse(c, {"--config", missing}), missing + ": cannot open config file");
}

TEST(ConfigErrors, CommandLineMistakes) {
  Config c;
  EXPECT_EQ(parse(c, {"--train.lrr=1e-3"}),
            "unknown option '--train.lrr' (did you mean '--train.lr'?)");
  Config d;
  EXPECT_EQ(parse(d, {"--train.steps=abc"}), "--train.steps: expected an integer, got 'abc'");
  Config e;
  EXPECT_EQ(parse(e, {"--backend.device=gpu"}),
            "--backend.device: expected one of cpu|cuda, got 'gpu'");
}

TEST(ConfigErrors, ClassicCli11MessagesAreRewritten) {
  Config c;
  EXPECT_EQ(describe_parse_error(CLI::FileError::Missing("configs/nope.ini"), c),
            "configs/nope.ini: cannot open config file");
  EXPECT_EQ(
      describe_parse_error(CLI::ConversionError("--train.steps", std::vector<std::string>{"x"}), c),
      "--train.steps: cannot convert 'x'");
}

TEST(ConfigNearest, OnlyCloseNamesAreSuggested) {
  const auto keys = all_keys();
  EXPECT_EQ(nearest_name("train.warmup", keys), "train.warmup_steps");
  EXPECT_EQ(nearest_name("dir", keys), "data.dir");  // same leaf: first section wins
  EXPECT_EQ(nearest_name("checkpoint.dri", keys), "checkpoint.dir");
  EXPECT_EQ(nearest_name("zzzzzzzzzzzz", keys), "");
}

// ---- to_ini --------------------------------------------------------------------------

TEST(ConfigIni, RoundTripOfRandomValues) {
  std::mt19937_64 rng(42);
  std::uniform_real_distribution<double> uniform(1e-7, 1.0);
  for (int trial = 0; trial < 5; ++trial) {
    Config c;
    c.model.arch = trial % 2 ? "llama" : "gpt2";
    c.model.n_layers = 1 + static_cast<int>(rng() % 48);
    c.model.d_ff = static_cast<int>(rng() % 10000);
    c.model.tie_embeddings = rng() % 2;
    c.model.norm_eps = uniform(rng) * 1e-4;
    c.model.init_std = uniform(rng);
    c.data.dir = "runs/data set " + std::to_string(rng() % 1000);
    c.train.lr = uniform(rng);
    c.train.beta2 = uniform(rng);
    c.train.seed = rng();
    c.train.steps = static_cast<int64_t>(rng() % 10000000000ull);
    c.backend.peak_gflops = uniform(rng) * 1e6;
    c.checkpoint.resume = trial % 2 ? "auto" : "";
    c.log.all_ranks = trial % 2;
    const std::string text = to_ini(c);
    TempIni ini(text);
    Config back;
    ASSERT_EQ(parse(back, {"--config", ini.path()}), "") << text;
    EXPECT_EQ(to_ini(back).substr(to_ini(back).find('\n')), text.substr(text.find('\n')));
    EXPECT_EQ(back.model.n_layers, c.model.n_layers);
    EXPECT_EQ(back.model.norm_eps, c.model.norm_eps);  // exact: shortest round-trip digits
    EXPECT_EQ(back.train.lr, c.train.lr);
    EXPECT_EQ(back.train.seed, c.train.seed);
    EXPECT_EQ(back.train.steps, c.train.steps);
    EXPECT_EQ(back.data.dir, c.data.dir);
    EXPECT_EQ(back.checkpoint.resume, c.checkpoint.resume);
    EXPECT_EQ(back.model.tie_embeddings, c.model.tie_embeddings);
    EXPECT_EQ(back.file_keys, all_keys());
  }
}

TEST(ConfigIni, EverySectionAndKeyIsWritten) {
  const std::string text = to_ini(Config{});
  for (const char* section :
       {"[model]", "[data]", "[train]", "[parallel]", "[backend]", "[checkpoint]", "[log]"})
    EXPECT_NE(text.find(std::string("\n") + section + "\n"), std::string::npos) << section;
  for (const std::string& key : all_keys()) {
    const std::string name = key.substr(key.find('.') + 1);
    EXPECT_NE(text.find("\n" + name + " = "), std::string::npos) << key;
  }
  EXPECT_NE(text.find("\ndir = \"\"\n"), std::string::npos);  // empty checkpoint.dir quoted
}

TEST(ConfigKeys, AreUniqueAndDotted) {
  const auto keys = all_keys();
  EXPECT_GE(keys.size(), 50u);
  std::set<std::string> unique(keys.begin(), keys.end());
  EXPECT_EQ(unique.size(), keys.size());
  for (const auto& key : keys) EXPECT_EQ(std::count(key.begin(), key.end(), '.'), 1) << key;
  EXPECT_EQ(keys.front(), "model.arch");
}

// ---- without a command line (load.cpp): add_options on a top-level app --------------

TEST(ConfigLoad, LoadFileReadsAndValidates) {
  TempIni ini("[model]\nn_layers = 7\n[train]\nlr = 2e-3\n");
  const Config c = load_file(ini.path());
  EXPECT_EQ(c.model.n_layers, 7);
  EXPECT_DOUBLE_EQ(c.train.lr, 2e-3);
  EXPECT_EQ(c.source_file, ini.path());
  EXPECT_EQ(c.file_keys, (std::vector<std::string>{"model.n_layers", "train.lr"}));
}

TEST(ConfigLoad, LoadFileErrorsNameTheFile) {
  TempIni bad_key("[train]\nlrr = 1\n");
  try {
    load_file(bad_key.path());
    ADD_FAILURE() << "no error";
  } catch (const UserError& e) {
    EXPECT_EQ(std::string(e.what()),
              bad_key.path() + ": unknown key 'train.lrr' (did you mean 'train.lr'?)");
  }
  TempIni bad_value("[train]\nsteps = many\n");
  EXPECT_THROW(load_file(bad_value.path()), UserError);
  TempIni invalid("[parallel]\npp = 99\n");
  try {
    load_file(invalid.path());
    ADD_FAILURE() << "no error";
  } catch (const UserError& e) {
    EXPECT_EQ(std::string(e.what()),
              invalid.path() + ": parallel.pp: expected at most model.n_layers (4), got 99");
  }
}

TEST(ConfigLoad, FromTextRoundTripsToIni) {
  Config c;
  c.model.arch = "llama";
  c.model.n_kv_heads = 2;
  c.train.seed = 987654321;
  const Config back = from_text(to_ini(c), "ckpt.h5:/config");
  EXPECT_EQ(back.source_file, "ckpt.h5:/config");
  EXPECT_EQ(back.model.kv_heads(), 2);
  EXPECT_EQ(back.train.seed, 987654321u);
  EXPECT_THROW(from_text("[model]\narch = bert\n", "ckpt.h5:/config"), UserError);
}

}  // namespace
}  // namespace kumiko::config
