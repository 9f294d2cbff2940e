// kumiko train --config FILE [--section.key=value ...]
// Under mpirun/srun every rank runs this; the ranks form the dp x tp x pp grid.
#include <cstdio>
#include <memory>

#include "cli/commands.h"
#include "kumiko/comm/communicator.h"
#include "kumiko/comm/watchdog.h"
#include "kumiko/config/config.h"
#include "kumiko/core/log.h"
#include "kumiko/train/trainer.h"

namespace kumiko::cli {

namespace {

int run_train(const config::Config& config) {
  config::validate(config);  // identical on every rank: a UserError exits 2 everywhere
  comm::Communicator& world = comm::world();
  log::init({world.rank(), world.size(), config.log.level, config.log.all_ranks});
  const int want = config.parallel.dp * config.parallel.tp * config.parallel.pp;
  KUMIKO_USER_CHECK(world.size() == want, "parallel.dp x parallel.tp x parallel.pp = ", config.parallel.dp,
                    " x ", config.parallel.tp, " x ", config.parallel.pp, " = ", want,
                    " ranks, but the job has ", world.size(),
                    " (set the product equal to the number of processes)");
  if (world.size() > 1 && config.parallel.comm_timeout_s > 0) comm::Watchdog::start(config.parallel.comm_timeout_s);
  if (world.size() > 1)
    log::get("comm")->info("{} ranks over {}; CUDA-aware MPI: {}", world.size(), comm::mpi_library_version(),
                           comm::mpi_cuda_aware() ? "yes" : "no");
  try {
    train::Trainer trainer(config, world);
    const auto summary = trainer.run();
    if (summary.diverged) return train::kExitNonFinite;
    return summary.preempted ? train::kExitPreempted : train::kExitOk;
  } catch (const std::exception& e) {
    if (world.size() == 1) throw;
    // One rank failing must not leave the others waiting in a collective: end the
    // whole job with this rank's message and the usual exit code.
    const bool user = dynamic_cast<const UserError*>(&e) != nullptr;
    std::fprintf(stderr, "kumiko: %s (rank %d): %s\n", user ? "error" : "internal error", world.rank(), e.what());
    std::fflush(stderr);
    world.abort(user ? train::kExitUser : train::kExitInternal);
  }
  return train::kExitInternal;  // not reached: abort() ends the process
}

}  // namespace

void add_train_command(CLI::App& app, Registry& registry) {
  CLI::App* sub = app.add_subcommand("train", "Train a model from an INI configuration");
  auto config = std::make_shared<config::Config>();
  config::add_options(*sub, *config);
  registry.add({sub, [config] { return run_train(*config); },
                [config](const CLI::ParseError& e) { return config::describe_parse_error(e, *config); }});
}

}  // namespace kumiko::cli
