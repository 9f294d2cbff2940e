// kumiko ckpt inspect PATH | kumiko ckpt verify PATH
#include <cstdio>
#include <memory>

#include "cli/commands.h"
#include "kumiko/ckpt/h5file.h"
#include "kumiko/ckpt/store.h"
#include "kumiko/core/error.h"

namespace kumiko::cli {
namespace {

struct CkptOptions {
  std::string path;
  bool show_config = false;
};

int run_verify(const CkptOptions& o) {
  const auto problems = ckpt::verify_file(o.path);
  if (problems.empty()) {
    std::printf("%s: OK (every dataset read back and passed its checksum)\n", o.path.c_str());
    return 0;
  }
  for (const auto& p : problems) std::fprintf(stderr, "kumiko: error: %s\n", p.c_str());
  return 2;
}

int run_inspect(const CkptOptions& o) {
  ckpt::H5Reader r(o.path);
  std::printf("file:    %s\n", o.path.c_str());
  for (const char* key : {"format", "tokenizer_sha256", "tokenizer_path"})
    if (r.has_attr(key)) std::printf("%-8s %s\n", (std::string(key) + ":").c_str(), r.attr_string(key).c_str());
  for (const char* key : {"format_version", "step"})
    if (r.has_attr(key)) std::printf("%-8s %lld\n", (std::string(key) + ":").c_str(), static_cast<long long>(r.attr_int(key)));
  if (r.has("/state"))
    for (const auto& name : r.list("/state")) {
      int64_t v = 0;
      r.read_i64("/state/" + name, {1}, &v);
      std::printf("state.%s = %lld\n", name.c_str(), static_cast<long long>(v));
    }
  int64_t total = 0;
  std::printf("\n%-48s %-16s %12s\n", "tensor", "shape", "elements");
  std::vector<std::string> groups = {"/model"};
  if (r.has("/optim/m")) groups.push_back("/optim/m");
  if (r.has("/optim/v")) groups.push_back("/optim/v");
  for (const auto& g : groups)
    for (const auto& name : r.list(g)) {
      const Shape shape = r.shape(g + "/" + name);
      total += numel_of(shape);
      std::printf("%-48s %-16s %12lld\n", (g.substr(1) + "/" + name).c_str(), shape_str(shape).c_str(),
                  static_cast<long long>(numel_of(shape)));
    }
  std::printf("\n%lld float32 elements (%.1f MB)\n", static_cast<long long>(total), total * 4 / 1e6);
  if (o.show_config) std::printf("\n%s\n", r.read_string("/config").c_str());
  return 0;
}

}  // namespace

void add_ckpt_command(CLI::App& app, Registry& registry) {
  CLI::App* ckpt = app.add_subcommand("ckpt", "Inspect or verify checkpoint and weights files");
  ckpt->require_subcommand(1);
  auto o = std::make_shared<CkptOptions>();
  CLI::App* inspect = ckpt->add_subcommand("inspect", "Step, state, tensor table (and --config)");
  inspect->add_option("path", o->path, "Checkpoint or weights file")->required();
  inspect->add_flag("--config", o->show_config, "Print the stored configuration");
  CLI::App* verify = ckpt->add_subcommand("verify", "Read every dataset and check its checksum");
  verify->add_option("path", o->path, "Checkpoint or weights file")->required();
  registry.add({ckpt, [o, inspect] { return inspect->parsed() ? run_inspect(*o) : run_verify(*o); }, {}});
}

}  // namespace kumiko::cli
