#include "cli/commands.h"

#include <cstdio>

#include "kumiko/core/error.h"
#include "kumiko/gpu/engine.h"

namespace kumiko::cli {

const Command* Registry::parsed(const CLI::App& app) const {
  for (const auto& c : commands_)
    if (c.app->parsed()) return &c;
  return nullptr;
}

int Registry::run_selected(const CLI::App& app) const {
  const Command* c = parsed(app);
  KUMIKO_CHECK(c != nullptr, "no subcommand selected");
  return c->run();
}

int report_parse_error(const CLI::App& app, const Registry& registry, const CLI::ParseError& e) {
  if (e.get_exit_code() == 0) return app.exit(e);  // --help and friends
  std::string message;
  if (const Command* c = registry.parsed(app); c && c->describe_error) message = c->describe_error(e);
  if (message.empty()) message = e.what();
  std::fprintf(stderr, "kumiko: error: %s\n", message.c_str());
  return 2;
}

void add_version_command(CLI::App& app, Registry& registry) {
  CLI::App* sub = app.add_subcommand("version", "Print the version and the compiled-in backends");
  registry.add({sub, [] {
                  std::printf("kumiko 0.1.0\n");
                  if (gpu::cuda_built()) {
                    const int n = gpu::visible_devices();
                    if (n < 0)
                      std::printf("cuda: compiled in; the CUDA driver could not be initialised (no GPU here)\n");
                    else
                      std::printf("cuda: compiled in, %d device(s) visible\n", n);
                  } else
                    std::printf("cuda: not compiled in\n");
                  return 0;
                },
                {}});
}

void add_all_commands(CLI::App& app, Registry& registry) {
  add_prepare_command(app, registry);
  add_config_command(app, registry);
  add_train_command(app, registry);
  add_sample_command(app, registry);
  add_ckpt_command(app, registry);
  add_bench_command(app, registry);
  add_plan_command(app, registry);
  add_plot_command(app, registry);
  add_hf_commands(app, registry);
  add_version_command(app, registry);
}

}  // namespace kumiko::cli
