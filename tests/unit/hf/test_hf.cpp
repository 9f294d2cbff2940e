// Hugging Face import/export (train/hf.h, docs/huggingface.md):
// - a GPT-2 and a Llama folder written by transformers (tests/golden/hf, random
//   weights far from uniform) import into kumiko, whose forward gives transformers'
//   logits and loss within 1e-5;
// - export -> import is bitwise, also through sharded safetensors;
// - configs and folders kumiko cannot compute are refused naming the key or tensor;
// - train.init_from starts training from the imported weights.
#include <cmath>
#include <cstring>
#include <functional>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "kumiko/core/error.h"
#include "kumiko/core/log.h"
#include "kumiko/model/decoder.h"
#include "kumiko/model/transformer.h"
#include "kumiko/train/hf.h"
#include "kumiko/train/trainer.h"
#include "kumiko/train/weights.h"
#include "kumiko_test_support.h"

namespace kumiko::train::hf {
namespace {

namespace fs = std::filesystem;

std::string golden_dir(const std::string& arch) { return std::string(KUMIKO_SOURCE_DIR) + "/tests/golden/hf/" + arch; }

nlohmann::json golden(const std::string& arch) {
  std::ifstream in(golden_dir(arch) + "/golden.json");
  return nlohmann::json::parse(in);
}

// A one-process model holding `in`'s tensors.
std::unique_ptr<model::Transformer<float>> load(const Imported& in, int64_t B, int64_t T) {
  auto m = std::make_unique<model::Transformer<float>>(model::Dims::from(in.model), B, T);
  model::scatter_logical(*m, in.values, m->params().flat_values().data());
  return m;
}

class HfGolden : public ::testing::TestWithParam<std::string> {};

TEST_P(HfGolden, ImportedModelGivesTransformersLogitsAndLoss) {
  const auto g = golden(GetParam());
  const Imported in = read_folder(golden_dir(GetParam()));
  const int64_t B = g["shape"][0], T = g["shape"][1], V = g["shape"][2];
  const auto ids = g["input_ids"].get<std::vector<std::vector<int32_t>>>();
  const auto want = g["logits"].get<std::vector<double>>();
  ASSERT_EQ(static_cast<int64_t>(want.size()), B * T * V);
  double scale = 0;
  for (double x : want) scale = std::max(scale, std::abs(x));
  // Logits at every position through the KV-cache decoder.
  auto m = load(in, 1, 1);
  double worst = 0;
  for (int64_t b = 0; b < B; ++b) {
    model::KvDecoder dec(*m, T);
    std::vector<float> logits(static_cast<size_t>(V));
    for (int64_t t = 0; t < T; ++t) {
      dec.step(ids[b][t], logits.data());
      for (int64_t v = 0; v < V; ++v)
        worst = std::max(worst, std::abs(logits[v] - want[(b * T + t) * V + v]) / scale);
    }
  }
  EXPECT_LT(worst, 1e-5) << "largest logit difference relative to the largest logit";
  // The loss of the whole batch through the training forward (next-token targets).
  std::vector<int32_t> inputs, targets;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t + 1 < T; ++t) {
      inputs.push_back(ids[b][t]);
      targets.push_back(ids[b][t + 1]);
    }
  auto mt = load(in, B, T - 1);
  const double loss = mt->loss(inputs.data(), targets.data(), B, T - 1);
  EXPECT_NEAR(loss, g["loss"].get<double>(), 1e-5 * g["loss"].get<double>());
  EXPECT_GT(std::abs(loss - std::log(double(V))), 0.1) << "random weights far from uniform predictions";
}

TEST_P(HfGolden, ExportThenImportIsBitwise) {
  const auto dir = testing::temp_run_dir("hf-roundtrip-" + GetParam());
  fs::create_directories(dir);
  log::init({0, 1, "off", false});
  import_folder(golden_dir(GetParam()), dir + "/model.h5");
  const Imported a = read_folder(golden_dir(GetParam()));
  for (const uint64_t shard : {uint64_t{1} << 40, uint64_t{20000}}) {  // one file, then several shards
    const std::string out = dir + "/hf-" + std::to_string(shard);
    const auto files = export_folder(dir + "/model.h5", out, shard);
    EXPECT_EQ(fs::exists(out + "/model.safetensors.index.json"), shard < 100000) << out;
    EXPECT_TRUE(fs::exists(out + "/config.json"));
    const Imported b = read_folder(out);
    ASSERT_EQ(a.values.size(), b.values.size());
    for (size_t i = 0; i < a.values.size(); ++i) EXPECT_EQ(a.values[i], b.values[i]) << a.specs[i].name;
  }
  // The .ini beside the weights file holds the [model] section.
  std::ifstream ini(dir + "/model.ini");
  const std::string text((std::istreambuf_iterator<char>(ini)), {});
  EXPECT_NE(text.find("arch = \"" + GetParam() + "\""), std::string::npos) << text;
}

INSTANTIATE_TEST_SUITE_P(Arch, HfGolden, ::testing::Values("gpt2", "llama"));

// A copy of a golden folder with config.json edited by `edit`.
std::string edited_copy(const std::string& arch, const std::string& name,
                        const std::function<void(nlohmann::json&)>& edit) {
  const auto dir = testing::temp_run_dir("hf-edit-" + name);
  fs::create_directories(dir);
  for (const auto& f : fs::directory_iterator(golden_dir(arch))) fs::copy(f.path(), dir + "/" + f.path().filename().string());
  auto config = nlohmann::json::parse(std::ifstream(dir + "/config.json"));
  edit(config);
  std::ofstream(dir + "/config.json") << config.dump();
  return dir;
}

void expect_user_error(const std::string& dir, const std::vector<std::string>& parts) {
  try {
    read_folder(dir);
    ADD_FAILURE() << "import accepted " << dir;
  } catch (const UserError& e) {
    for (const auto& p : parts) EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
  }
}

TEST(HfImport, RefusesWhatKumikoCannotCompute) {
  expect_user_error(edited_copy("llama", "mistral", [](auto& c) { c["model_type"] = "mistral"; }),
                    {"config.json", "model_type 'mistral'"});
  expect_user_error(edited_copy("llama", "scaling", [](auto& c) { c["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}}; }),
                    {"config.json", "rope_scaling"});
  expect_user_error(edited_copy("gpt2", "erf", [](auto& c) { c["activation_function"] = "gelu"; }),
                    {"config.json", "activation_function"});
  // Sizes kumiko cannot build (no heads, heads not dividing the width) are one-line
  // errors, not a division by zero.
  expect_user_error(edited_copy("llama", "noheads", [](auto& c) { c["num_attention_heads"] = 0; }),
                    {"config.json", "model.n_heads"});
  expect_user_error(edited_copy("gpt2", "oddheads", [](auto& c) { c["n_head"] = 5; }),
                    {"config.json", "n_heads"});
  // A model with more layers than the file holds: the missing tensor is named.
  expect_user_error(edited_copy("llama", "deeper", [](auto& c) { c["num_hidden_layers"] = 3; }),
                    {"model.layers.2.", "missing"});
  // Fewer layers: the file's extra tensors map nowhere.
  expect_user_error(edited_copy("gpt2", "shallower", [](auto& c) { c["n_layer"] = 1; }),
                    {"h.1.", "maps to no kumiko parameter"});
  expect_user_error(testing::temp_run_dir("hf-nothing"), {"config.json"});
}

TEST(HfImport, TrainingStartsFromTheImportedWeights) {
  const auto dir = testing::temp_run_dir("hf-init");
  fs::create_directories(dir);
  log::init({0, 1, "off", false});
  import_folder(golden_dir("llama"), dir + "/llama.h5");
  auto c = testing::tiny_config("llama", dir + "/run");
  c.model = read_folder(golden_dir("llama")).model;
  c.train.steps = 3;
  c.train.init_from = dir + "/llama.h5";
  c.log.save_init_weights = true;
  auto world = comm::make_local();
  Trainer(c, *world).run();
  model::Transformer<float> start(model::Dims::from(c.model), 1, 1), imported(model::Dims::from(c.model), 1, 1);
  read_weights(c.log.run_dir + "/weights_init.h5", start.params());
  read_weights(dir + "/llama.h5", imported.params());
  const auto& a = start.params().flat_values();
  EXPECT_EQ(0, std::memcmp(a.data(), imported.params().flat_values().data(), a.bytes()));
  // Another model in the file is refused, naming the key.
  auto other = c;
  other.model.n_layers = 3;
  other.log.run_dir = dir + "/other";
  try {
    Trainer(other, *world).run();
    ADD_FAILURE() << "init_from accepted another model";
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("model.n_layers"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace kumiko::train::hf
