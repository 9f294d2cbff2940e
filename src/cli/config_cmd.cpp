// `kumiko config`: read a configuration (INI file + command-line overrides), validate
// it and print a summary, or print the effective configuration with --dump.
#include <cstdio>
#include <memory>

#include "cli/commands.h"
#include "kumiko/config/config.h"
#include "kumiko/gpu/engine.h"
#include "kumiko/model/transformer.h"

namespace kumiko::cli {

void add_config_command(CLI::App& app, Registry& registry) {
  CLI::App* sub = app.add_subcommand(
      "config", "Validate a configuration and print a summary (or the effective INI with --dump)");
  auto config = std::make_shared<kumiko::config::Config>();
  auto dump = std::make_shared<bool>(false);
  kumiko::config::add_options(*sub, *config);
  sub->add_flag("--dump", *dump,
                "Print the effective configuration (every key) as INI, then validate it");
  registry.add({sub,
                [config, dump] {
                  if (*dump) {
                    std::fputs(kumiko::config::to_ini(*config).c_str(), stdout);
                    std::fflush(stdout);
                  }
                  kumiko::config::validate(*config);
                  if (!*dump) {
                    std::printf("config OK: %s\n", kumiko::config::summary(*config).c_str());
                    const auto& c = *config;
                    if (c.backend.device == "cuda" && gpu::cuda_built()) {
                      // What each GPU's arena will take (no GPU needed to compute it).
                      const size_t bytes = gpu::planned_device_bytes(
                          model::Dims::from(c.model), c.train.micro_batch, c.data.seq_len,
                          {c.backend.dtype, c.backend.matmul, c.backend.attention});
                      std::printf("GPU memory per process: %.2f GiB in the arena (micro_batch %d x seq_len %d, "
                                  "%s), plus the vendor libraries' workspaces\n",
                                  bytes / 1073741824.0, c.train.micro_batch, c.data.seq_len, c.backend.dtype.c_str());
                    }
                  }
                  return 0;
                },
                [config](const CLI::ParseError& e) {
                  return kumiko::config::describe_parse_error(e, *config);
                }});
}

}  // namespace kumiko::cli
