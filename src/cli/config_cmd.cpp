// `kumiko config`: read a configuration (INI file + command-line overrides), validate
// it and print a summary, or print the effective configuration with --dump.
#include <cstdio>
#include <memory>

#include "cli/commands.h"
#include "kumiko/config/config.h"
#include "kumiko/plan/plan.h"

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
                    if (c.backend.device == "cuda") {
                      // What the largest GPU rank will take (kumiko plan's memory; no GPU needed).
                      double most = 0, arena = 0;
                      for (int r = 0; r < c.parallel.pp; ++r) {
                        const auto m = plan::rank_memory(c, r);
                        if (m.total() > most) most = m.total(), arena = m.arena;
                      }
                      std::printf("GPU memory per rank: %.2f GiB planned, of which %.2f GiB in the model's arena "
                                  "(micro_batch %d x seq_len %d, %s, recompute %s); kumiko plan shows every term\n",
                                  most / 1073741824.0, arena / 1073741824.0, c.train.micro_batch, c.data.seq_len,
                                  c.backend.dtype.c_str(), c.train.recompute.c_str());
                    }
                  }
                  return 0;
                },
                [config](const CLI::ParseError& e) {
                  return kumiko::config::describe_parse_error(e, *config);
                }});
}

}  // namespace kumiko::cli
