// kumiko import-hf --from DIR --out FILE.h5 | kumiko export-hf --from FILE.h5 --out DIR
// (docs/huggingface.md).
#include <cstdio>
#include <memory>

#include "cli/commands.h"
#include "kumiko/core/log.h"
#include "kumiko/train/hf.h"

namespace kumiko::cli {
namespace {

struct HfOptions {
  std::string from, out;
  double max_shard_mb = 5000;  // transformers' default shard size (5 GB)
};

}  // namespace

void add_hf_commands(CLI::App& app, Registry& registry) {
  auto o = std::make_shared<HfOptions>();
  CLI::App* import = app.add_subcommand("import-hf", "Convert a Hugging Face GPT-2 or Llama folder to a kumiko weights file");
  import->add_option("--from", o->from, "Folder with config.json and model.safetensors (or its shards + index)")
      ->required();
  import->add_option("--out", o->out, "Weights file to write (FILE.h5; FILE.ini gets the [model] section)")->required();
  registry.add({import,
                [o] {
                  log::init({});
                  for (const auto& note : train::hf::import_folder(o->from, o->out))
                    std::printf("import-hf: %s\n", note.c_str());
                  return 0;
                },
                {}});
  CLI::App* exp = app.add_subcommand("export-hf", "Write a kumiko weights file or checkpoint as a Hugging Face folder");
  exp->add_option("--from", o->from, "kumiko weights file or checkpoint (.h5)")->required();
  exp->add_option("--out", o->out, "Folder to write (created if missing)")->required();
  exp->add_option("--max-shard-mb", o->max_shard_mb, "Split model.safetensors into shards above this size (MB)")
      ->check(CLI::PositiveNumber);
  registry.add({exp,
                [o] {
                  log::init({});
                  const auto files = train::hf::export_folder(o->from, o->out,
                                                              static_cast<uint64_t>(o->max_shard_mb * 1e6));
                  for (const auto& f : files) std::printf("export-hf: wrote %s\n", f.c_str());
                  return 0;
                },
                {}});
}

}  // namespace kumiko::cli
