// kumiko plot RUN_DIR... --out curves.svg [--labels a,b] [--title TEXT]: the training
// curves of one or more runs (their metrics.jsonl) as one self-contained SVG.
#include <algorithm>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "kumiko/core/error.h"
#include "kumiko/train/plot.h"

namespace kumiko::cli {
namespace {

struct PlotCommandOptions {
  std::vector<std::string> runs;
  std::string out;
  std::vector<std::string> labels;
  std::string title;
};

int run_plot(const PlotCommandOptions& o) {
  train::check_svg_path(o.out);  // before reading anything
  KUMIKO_USER_CHECK(o.labels.empty() || o.labels.size() == o.runs.size(), "--labels: expected ",
                    o.runs.size(), " names (one per run folder), got ", o.labels.size());
  std::vector<train::RunCurves> runs;
  for (size_t i = 0; i < o.runs.size(); ++i)
    runs.push_back(train::read_run(o.runs[i], o.labels.empty() ? std::string() : o.labels[i]));
  // Two folders with the same name (a/run, b/run) are told apart by their paths.
  if (o.labels.empty()) {
    std::vector<std::string> names;
    for (const auto& r : runs) names.push_back(r.label);
    for (size_t i = 0; i < runs.size(); ++i)
      if (std::count(names.begin(), names.end(), names[i]) > 1) runs[i].label = o.runs[i];
  }
  train::PlotOptions plot;
  plot.title = o.title;
  train::write_file_atomically(o.out, train::render_svg(runs, plot));
  size_t steps = 0;
  for (const auto& r : runs) steps += r.loss.steps.size();
  std::printf("wrote %s (%zu run%s, %zu training steps)\n", o.out.c_str(), runs.size(),
              runs.size() == 1 ? "" : "s", steps);
  return 0;
}

}  // namespace

void add_plot_command(CLI::App& app, Registry& registry) {
  CLI::App* sub = app.add_subcommand(
      "plot", "Draw runs' loss, val_loss, learning rate, tokens/s and gradient norm as an SVG");
  auto o = std::make_shared<PlotCommandOptions>();
  sub->add_option("runs", o->runs, "Run folders (each holds metrics.jsonl)")->required();
  sub->add_option("--out", o->out, "Output file, .svg")->required();
  sub->add_option("--labels", o->labels, "Legend names, comma-separated (default: folder names)")
      ->delimiter(',');
  sub->add_option("--title", o->title, "Title above the panels");
  registry.add({sub, [o] { return run_plot(*o); }, {}});
}

}  // namespace kumiko::cli
