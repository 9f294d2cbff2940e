// Perplexity parity with transformers on the bundled corpus (docs/huggingface.md):
// tests/golden/hf/llama-shakespeare holds a Llama trained by transformers on
// data/tinyshakespeare.txt tokenized by `kumiko prepare`
// (scripts/reference/make_hf_perplexity_golden.py) and the validation loss transformers
// gives it on kumiko's evaluation windows (seq_len 64, eval_batches 2, global_batch 8).
// kumiko prepares the same corpus, imports the folder and must score the same 16 windows
// to that loss within 1e-4 relative (fp32).
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <system_error>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "kumiko/core/log.h"
#include "kumiko/data/loader.h"
#include "kumiko/data/prepare.h"
#include "kumiko/model/sharding.h"
#include "kumiko/model/transformer.h"
#include "kumiko/train/hf.h"
#include "kumiko_test_support.h"

namespace kumiko::train::hf {
namespace {

namespace fs = std::filesystem;

const std::string kGoldenDir = std::string(KUMIKO_SOURCE_DIR) + "/tests/golden/hf/llama-shakespeare";

nlohmann::json golden() {
  std::ifstream in(kGoldenDir + "/golden.json");
  return nlohmann::json::parse(in);
}

// golden.json's "prepare" (the arguments of `kumiko prepare`, paths relative to the
// repository root, without --out) as the library's options.
data::PrepareOptions prepare_options(const nlohmann::json& args, const std::string& out) {
  data::PrepareOptions o;
  o.out = out;
  o.progress = false;
  const auto a = args.get<std::vector<std::string>>();
  for (size_t i = 0; i < a.size(); i += 2) {
    if (i + 1 >= a.size()) {
      ADD_FAILURE() << "golden.json \"prepare\": " << a[i] << " has no value";
      break;
    }
    if (a[i] == "--input")
      o.inputs.push_back(std::string(KUMIKO_SOURCE_DIR) + "/" + a[i + 1]);
    else if (a[i] == "--vocab-size")
      o.vocab_size = std::stoi(a[i + 1]);
    else if (a[i] == "--model-type")
      o.model_type = a[i + 1];
    else if (a[i] == "--val-fraction")
      o.val_fraction = std::stod(a[i + 1]);
    else if (a[i] == "--threads")  // SentencePiece's trainer gives another model for another thread count
      o.threads = std::stoi(a[i + 1]);
    else
      ADD_FAILURE() << "golden.json \"prepare\": option " << a[i] << " is not known to this test";
  }
  return o;
}

// Removes a folder when the test ends, also after a failed ASSERT.
struct RemoveOnExit {
  std::string path;
  ~RemoveOnExit() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

TEST(HfPerplexity, ImportedShakespeareLlamaScoresTransformersValLoss) {
  log::init({0, 1, "warn", false});
  const auto g = golden();
  const int64_t T = g["seq_len"].get<int64_t>();
  const int64_t N = g["eval_batches"].get<int64_t>() * g["global_batch"].get<int64_t>();
  ASSERT_EQ(N, g["windows"].get<int64_t>());
  const double want = g["val_loss"].get<double>();

  // The corpus, tokenized by kumiko's library exactly as the generator's `kumiko prepare`.
  const auto dir = testing::temp_run_dir("hf-perplexity");
  const RemoveOnExit cleanup{dir};
  const auto summary = data::prepare(prepare_options(g["prepare"], dir));
  ASSERT_EQ(summary.tokenizer_sha256, g["tokenizer_sha256"].get<std::string>())
      << "kumiko prepare " << g["prepare"].dump()
      << " trained a different tokenizer.model than the one tests/golden/hf/llama-shakespeare was made "
         "with. SentencePiece training is deterministic, so tokenization changed (prepare options, "
         "normalization, SentencePiece version or corpus): the golden no longer matches the data; "
         "regenerate it with scripts/reference/make_hf_perplexity_golden.py if the change is intended.";
  EXPECT_EQ(summary.val_tokens, g["val_tokens"].get<int64_t>());
  EXPECT_EQ(summary.train_tokens, g["train_tokens"].get<int64_t>());

  const Imported in = read_folder(kGoldenDir);
  EXPECT_EQ(in.model.arch, "llama");
  ASSERT_EQ(in.model.vocab_size, summary.vocab_size);
  ASSERT_GE(in.model.max_seq_len, T);

  // kumiko's evaluation batch (src/train/trainer.cpp, evaluate): the val split as one
  // batch of N sequences at step 0, windows 0 .. N-1 (mod the val windows).
  const data::Loader loader(dir, T, 1234);
  EXPECT_EQ(loader.num_windows(data::Split::val), g["val_windows"].get<int64_t>());
  std::vector<int32_t> inputs(static_cast<size_t>(N * T)), targets(inputs.size());
  loader.fill(data::Split::val, 0, N, 0, N, inputs.data(), targets.data());

  model::Transformer<float> m(model::Dims::from(in.model), N, T);
  model::scatter_logical(m, in.values, m.params().flat_values().data());
  const double loss = m.loss(inputs.data(), targets.data(), N, T);
  const double rel = std::abs(loss - want) / want;
  std::printf("val_loss: transformers %.8f, kumiko %.8f, relative difference %.3e (ln 512 = %.4f)\n", want, loss,
              rel, std::log(512.0));
  EXPECT_LE(rel, 1e-4) << "kumiko " << loss << ", transformers " << want;
  // The model learned something: far below a uniform guess over the vocabulary.
  EXPECT_LT(loss, 5.5);
  EXPECT_LT(loss, std::log(static_cast<double>(in.model.vocab_size)) - 0.5);
}

}  // namespace
}  // namespace kumiko::train::hf
