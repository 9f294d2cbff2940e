#pragma once
// Training curves from run folders (their metrics.jsonl, docs/training.md) drawn as
// one self-contained SVG: 2x2 panels over a shared step axis (loss with val_loss,
// learning rate, tokens/s, gradient norm), one colour per run. `kumiko plot` uses it.
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace kumiko::train {

// One metric over steps, ascending and one value per step. Non-finite values (null
// in the file) are left out.
struct Series {
  std::vector<int64_t> steps;
  std::vector<double> values;
};

// What a run folder's metrics.jsonl holds. When a step appears more than once (a
// resumed run appends to the same file) the later line wins.
struct RunCurves {
  std::string label;  // legend name
  std::filesystem::path metrics_path;
  Series loss, lr, tokens_per_s, grad_norm;  // from the training-step lines
  Series val_loss;                           // from the evaluation lines
  std::vector<int64_t> skipped_steps;        // steps whose update was skipped
};

// Reads run_dir/metrics.jsonl. `label` empty = the folder's name. Throws UserError
// (one line naming the folder, or file:line and key) for a missing folder or file,
// a line that is not a JSON object, a known key of the wrong type, or a run without
// training steps. An unterminated last line that does not parse (a run writing it
// right now) is left out.
RunCurves read_run(const std::filesystem::path& run_dir, std::string label = {});

struct PlotOptions {
  std::string title;  // empty = none
  int width = 1000;   // pixels
  int height = 720;
};

std::string render_svg(const std::vector<RunCurves>& runs, const PlotOptions& options = {});

// Tick values at 1, 2 or 5 x 10^k spacing inside [lo, hi], about `target` of them.
std::vector<double> nice_ticks(double lo, double hi, int target = 5);

// Throws UserError unless `out` ends in .svg (the only format written).
void check_svg_path(const std::filesystem::path& out);

// Writes `text` to a temporary file next to `out`, then renames it over `out`: a
// reader never sees half a file.
void write_file_atomically(const std::filesystem::path& out, const std::string& text);

}  // namespace kumiko::train
