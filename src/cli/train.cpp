// kumiko train --config FILE [--section.key=value ...]
#include <memory>

#include "cli/commands.h"
#include "kumiko/config/config.h"
#include "kumiko/core/log.h"
#include "kumiko/train/trainer.h"

namespace kumiko::cli {

void add_train_command(CLI::App& app, Registry& registry) {
  CLI::App* sub = app.add_subcommand("train", "Train a model from an INI configuration");
  auto config = std::make_shared<config::Config>();
  config::add_options(*sub, *config);
  registry.add({sub,
                [config] {
                  config::validate(*config);
                  log::init({0, 1, config->log.level, config->log.all_ranks});
                  train::Trainer trainer(*config);
                  const auto summary = trainer.run();
                  return summary.preempted ? train::kExitPreempted : train::kExitOk;
                },
                [config](const CLI::ParseError& e) { return config::describe_parse_error(e, *config); }});
}

}  // namespace kumiko::cli
