// `kumiko config`: read a configuration (INI file + command-line overrides), validate
// it and print a summary, or print the effective configuration with --dump.
#include <cstdio>
#include <memory>

#include "cli/commands.h"
#include "kumiko/config/config.h"

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
                  if (!*dump)
                    std::printf("config OK: %s\n", kumiko::config::summary(*config).c_str());
                  return 0;
                },
                [config](const CLI::ParseError& e) {
                  return kumiko::config::describe_parse_error(e, *config);
                }});
}

}  // namespace kumiko::cli
