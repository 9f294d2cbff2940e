// kumiko: one binary, one subcommand per task.
#include <cstdio>
#include <iostream>

#include <CLI/CLI.hpp>

#include "cli/commands.h"
#include "kumiko/core/error.h"

int main(int argc, char** argv) {
  CLI::App app{"kumiko: train transformer language models on clusters"};
  app.require_subcommand(1);
  kumiko::cli::Registry registry;
  kumiko::cli::add_all_commands(app, registry);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return kumiko::cli::report_parse_error(app, registry, e);
  }
  try {
    return registry.run_selected(app);
  } catch (const kumiko::UserError& e) {
    std::fprintf(stderr, "kumiko: error: %s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "kumiko: internal error: %s\n", e.what());
    return 1;
  }
}
