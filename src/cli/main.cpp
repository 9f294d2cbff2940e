// kumiko: one binary, one subcommand per task.
#include <cstdio>
#include <iostream>

#include <CLI/CLI.hpp>

#include "cli/commands.h"
#include "kumiko/comm/communicator.h"
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
  int code = 0;
  try {
    code = registry.run_selected(app);
  } catch (const kumiko::UserError& e) {
    std::fprintf(stderr, "kumiko: error: %s\n", e.what());
    code = 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "kumiko: internal error: %s\n", e.what());
    code = 1;
  }
  kumiko::comm::finalize_world();  // MPI_Finalize when MPI was started
  return code;
}
