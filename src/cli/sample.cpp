// kumiko sample --checkpoint FILE --prompt TEXT [--max-new-tokens N] [--temperature X]
//               [--top-k K] [--seed S] [--tokenizer FILE]
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <span>
#include <vector>

#include "cli/commands.h"
#include "kumiko/config/load.h"
#include "kumiko/core/error.h"
#include "kumiko/data/tokenizer.h"
#include "kumiko/model/transformer.h"
#include "kumiko/train/threads.h"
#include "kumiko/train/sampler.h"
#include "kumiko/train/weights.h"

namespace kumiko::cli {
namespace {

struct SampleOptions {
  std::string checkpoint;
  std::string prompt = "\n";
  std::string tokenizer;  // default: the tokenizer recorded in the weights file
  train::SamplingOptions sampling;
  int threads = 0;
};

int run_sample(const SampleOptions& o) {
  const train::WeightsInfo info = train::read_weights_info(o.checkpoint);
  config::Config cfg = config::from_text(info.config_ini, o.checkpoint);
  train::set_threads(o.threads);
  const std::string tok_path = o.tokenizer.empty() ? info.tokenizer_path : o.tokenizer;
  KUMIKO_USER_CHECK(!tok_path.empty(), o.checkpoint,
                    ": records no tokenizer (trained on synthetic data?); pass --tokenizer");
  const data::Tokenizer tokenizer = data::Tokenizer::load(tok_path);
  KUMIKO_USER_CHECK(info.tokenizer_sha256.empty() || tokenizer.sha256() == info.tokenizer_sha256, tok_path,
                    ": tokenizer SHA-256 ", tokenizer.sha256(), " differs from the one the model was trained with (",
                    info.tokenizer_sha256, ")");

  const model::Dims dims = model::Dims::from(cfg.model);
  const int64_t window = cfg.data.seq_len;
  model::Transformer<float> model(dims, 1, 1);  // parameters only: decoding uses the KV cache
  train::read_weights(o.checkpoint, model.params());

  std::vector<int32_t> prompt = tokenizer.encode(o.prompt);
  if (prompt.empty()) prompt.push_back(tokenizer.eos_id() >= 0 ? tokenizer.eos_id() : 0);
  const std::vector<int32_t> generated = train::generate(model, prompt, window, o.sampling);
  std::printf("%s%s\n", o.prompt.c_str(), tokenizer.decode(generated).c_str());
  return 0;
}

}  // namespace

void add_sample_command(CLI::App& app, Registry& registry) {
  CLI::App* sub = app.add_subcommand("sample", "Generate text from a trained weights file");
  auto o = std::make_shared<SampleOptions>();
  sub->add_option("--checkpoint", o->checkpoint, "Weights or checkpoint file (.h5)")->required();
  sub->add_option("--prompt", o->prompt, "Text to continue");
  sub->add_option("--tokenizer", o->tokenizer, "SentencePiece model (default: the one recorded in the file)");
  sub->add_option("--max-new-tokens", o->sampling.max_new_tokens, "Tokens to generate")->check(CLI::Range(1, 1 << 20));
  sub->add_option("--temperature", o->sampling.temperature, "Sampling temperature (0 = greedy)")->check(CLI::Range(0.0, 100.0));
  sub->add_option("--top-k", o->sampling.top_k, "Sample among the k most likely tokens (0 = all)")->check(CLI::NonNegativeNumber);
  sub->add_option("--seed", o->sampling.seed, "Random seed");
  sub->add_option("--threads", o->threads,
                  "Threads (0 = OMP_NUM_THREADS, else every core it may run on, within a container's CPU limit)");
  registry.add({sub, [o] { return run_sample(*o); }, {}});
}

}  // namespace kumiko::cli
