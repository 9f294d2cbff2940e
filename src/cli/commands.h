#pragma once
// The subcommands of the kumiko binary. Each lives in its own file
// (src/cli/<command>.cpp) and registers itself here with add_<command>_command.
#include <functional>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

namespace kumiko::cli {

struct Command {
  CLI::App* app = nullptr;          // the CLI11 subcommand
  std::function<int()> run;         // runs after a successful parse; returns the exit code
  // Turns a CLI11 parse error of this subcommand into kumiko's one-line message
  // (for example naming the INI file and section.key); empty = CLI11's own text.
  std::function<std::string(const CLI::ParseError&)> describe_error;
};

class Registry {
 public:
  void add(Command command) { commands_.push_back(std::move(command)); }
  int run_selected(const CLI::App& app) const;
  const Command* parsed(const CLI::App& app) const;  // the subcommand named on the line

 private:
  std::vector<Command> commands_;
};

void add_all_commands(CLI::App& app, Registry& registry);
// Prints the message for a parse error and returns the exit code (0 for --help).
int report_parse_error(const CLI::App& app, const Registry& registry, const CLI::ParseError& e);

void add_prepare_command(CLI::App& app, Registry& registry);  // prepare.cpp
void add_config_command(CLI::App& app, Registry& registry);   // config_cmd.cpp
void add_train_command(CLI::App& app, Registry& registry);    // train.cpp
void add_sample_command(CLI::App& app, Registry& registry);   // sample.cpp
void add_ckpt_command(CLI::App& app, Registry& registry);     // ckpt.cpp
void add_bench_command(CLI::App& app, Registry& registry);    // bench.cpp
void add_plan_command(CLI::App& app, Registry& registry);     // plan.cpp
void add_plot_command(CLI::App& app, Registry& registry);     // plot.cpp
void add_hf_commands(CLI::App& app, Registry& registry);     // hf.cpp: import-hf, export-hf
void add_version_command(CLI::App& app, Registry& registry);  // commands.cpp

}  // namespace kumiko::cli
