// kumiko prepare: text files -> tokenizer.model + token shards (docs/data-format.md).
#include <cstdio>
#include <memory>

#include "cli/commands.h"
#include "kumiko/data/prepare.h"

namespace kumiko::cli {

void add_prepare_command(CLI::App& app, Registry& registry) {
  CLI::App* sub = app.add_subcommand(
      "prepare", "Train a tokenizer (or reuse one) and write token shards for training");
  auto options = std::make_shared<data::PrepareOptions>();
  sub->add_option("--input", options->inputs, "UTF-8 text file (repeatable; one document each)")
      ->required();
  sub->add_option("--out", options->out, "Output folder (tokenizer.model, train_*.bin, val_*.bin)")
      ->required();
  sub->add_option("--vocab-size", options->vocab_size, "Tokenizer vocabulary size")
      ->capture_default_str();
  sub->add_option("--model-type", options->model_type, "SentencePiece model: bpe or unigram")
      ->capture_default_str();
  sub->add_option("--tokenizer", options->tokenizer,
                  "Reuse this SentencePiece .model instead of training one");
  sub->add_option("--val-fraction", options->val_fraction,
                  "Fraction of each input (its last lines) kept for validation")
      ->capture_default_str();
  sub->add_option("--shard-tokens", options->shard_tokens, "Tokens per shard file")
      ->capture_default_str();
  sub->add_option("--threads", options->threads,
                  "Threads for training and encoding (0 = all cores)")
      ->capture_default_str();
  registry.add({sub,
                [options] {
                  const data::PrepareSummary s = data::prepare(*options);
                  std::printf(
                      "prepared %s: vocab %d (tokenizer sha256 %s)\n"
                      "  train: %lld tokens in %lld shard(s)\n"
                      "  val:   %lld tokens in %lld shard(s)\n"
                      "  %lld input bytes -> %lld shard bytes in %.1f s\n",
                      options->out.c_str(), s.vocab_size, s.tokenizer_sha256.c_str(),
                      static_cast<long long>(s.train_tokens),
                      static_cast<long long>(s.train_shards), static_cast<long long>(s.val_tokens),
                      static_cast<long long>(s.val_shards), static_cast<long long>(s.input_bytes),
                      static_cast<long long>(s.bytes_written), s.seconds);
                  return 0;
                },
                {}});
}

}  // namespace kumiko::cli
