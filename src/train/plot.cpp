// Reads run folders' metrics.jsonl and draws them as SVG (include/kumiko/train/plot.h).
#include "kumiko/train/plot.h"

#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <iterator>
#include <limits>
#include <map>
#include <string_view>
#include <utility>

#include <spdlog/fmt/fmt.h>
#include <nlohmann/json.hpp>

#include "kumiko/core/error.h"

namespace kumiko::train {
namespace fs = std::filesystem;

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// The last training-step or skipped-step line of one step.
struct StepLine {
  double loss = kNaN, lr = kNaN, tokens_per_s = kNaN, grad_norm = kNaN;
  bool skipped = false;
};

// A numeric key's value; NaN when the key is absent or null.
double number(const nlohmann::json& j, const char* key, const std::string& where) {
  const auto it = j.find(key);
  if (it == j.end() || it->is_null()) return kNaN;
  KUMIKO_USER_CHECK(it->is_number(), where, ": \"", key, "\" must be a number or null, got ",
                    it->dump());
  return it->get<double>();
}

bool truthy(const nlohmann::json& j, const char* key) {
  const auto it = j.find(key);
  if (it == j.end()) return false;
  return it->is_boolean() ? it->get<bool>() : it->is_number() && it->get<double>() != 0;
}

void add_finite(Series& s, int64_t step, double v) {
  if (!std::isfinite(v)) return;
  s.steps.push_back(step);
  s.values.push_back(v);
}

}  // namespace

RunCurves read_run(const fs::path& run_dir, std::string label) {
  std::error_code ec;
  KUMIKO_USER_CHECK(fs::is_directory(run_dir, ec), run_dir.string(), ": no such run folder");
  RunCurves run;
  run.metrics_path = run_dir / "metrics.jsonl";
  const std::string file = run.metrics_path.string();
  KUMIKO_USER_CHECK(fs::is_regular_file(run.metrics_path, ec), file,
                    ": not found (a run folder holds the metrics.jsonl that kumiko train writes)");
  std::ifstream in(run.metrics_path, std::ios::binary);
  KUMIKO_USER_CHECK(in.good(), file, ": cannot read (", std::strerror(errno), ")");
  if (label.empty()) {
    fs::path p = fs::absolute(run_dir, ec).lexically_normal();
    if (!p.has_filename()) p = p.parent_path();  // "runs/tiny/" names "tiny"
    label = p.filename().string();
  }
  run.label = std::move(label);

  std::map<int64_t, StepLine> steps;  // later lines replace earlier ones of the same step
  std::map<int64_t, double> val;
  std::string line;
  int64_t line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = file + ":" + std::to_string(line_no);
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::parse_error& e) {
      if (in.eof()) break;  // no newline yet: the line is still being written
      // e.what(): "[json.exception.parse_error.101] parse error at line 1, column 2: ..."
      const std::string what = e.what();
      const size_t column = what.find("column ");
      throw UserError(where + ": not a JSON line (" +
                      (column == std::string::npos ? what : what.substr(column)) + ")");
    }
    KUMIKO_USER_CHECK(j.is_object(), where, ": expected one JSON object per line, got ",
                      j.type_name());
    const auto s = j.find("step");
    KUMIKO_USER_CHECK(s != j.end() && s->is_number_integer(), where,
                      ": \"step\" must be an integer, got ",
                      s == j.end() ? std::string("no \"step\"") : s->dump());
    const int64_t step = s->get<int64_t>();
    // Kinds of line: a training step has loss and lr; an evaluation has val_loss; a
    // skipped step has "skipped". Others (events such as spikes) are not plotted.
    if (j.contains("loss") && j.contains("lr")) {
      steps[step] = {number(j, "loss", where), number(j, "lr", where),
                     number(j, "tokens_per_s", where), number(j, "grad_norm", where), false};
    } else if (j.contains("val_loss")) {
      val[step] = number(j, "val_loss", where);
    } else if (truthy(j, "skipped")) {
      steps[step] = StepLine{};
      steps[step].skipped = true;
    }
  }
  KUMIKO_USER_CHECK(!in.bad(), file, ": read error (", std::strerror(errno), ")");
  for (const auto& [step, l] : steps) {
    if (l.skipped) {
      run.skipped_steps.push_back(step);
      continue;
    }
    add_finite(run.loss, step, l.loss);
    add_finite(run.lr, step, l.lr);
    add_finite(run.tokens_per_s, step, l.tokens_per_s);
    add_finite(run.grad_norm, step, l.grad_norm);
  }
  for (const auto& [step, v] : val) add_finite(run.val_loss, step, v);
  KUMIKO_USER_CHECK(run.loss.steps.size() + run.lr.steps.size() > 0, file,
                    ": no training steps in ", line_no,
                    " lines (lines with \"loss\" and \"lr\"; has the run reached its first step?)");
  return run;
}

std::vector<double> nice_ticks(double lo, double hi, int target) {
  if (!(hi > lo) || target < 1) return {lo};
  // Of the spacings 1, 2, 5 and 10 x 10^k around (hi - lo) / target, the one whose
  // tick count comes closest to target.
  const double magnitude = std::pow(10.0, std::floor(std::log10((hi - lo) / target)));
  double step = magnitude;
  double best_miss = INFINITY;
  for (const double m : {1.0, 2.0, 5.0, 10.0}) {
    const double count =
        std::floor(hi / (m * magnitude) + 1e-9) - std::ceil(lo / (m * magnitude) - 1e-9) + 1;
    if (std::abs(count - target) < best_miss)
      best_miss = std::abs(count - target), step = m * magnitude;
  }
  std::vector<double> ticks;
  const auto first = static_cast<int64_t>(std::ceil(lo / step - 1e-9));
  const auto last = static_cast<int64_t>(std::floor(hi / step + 1e-9));
  for (int64_t k = first; k <= last; ++k)
    ticks.push_back(static_cast<double>(k) * step);  // k * step: no accumulated error
  return ticks;
}

namespace {

// Okabe & Ito's colour-blind-safe palette, yellow last (faint on white); runs past
// the eighth repeat the colours dashed.
constexpr const char* kColours[] = {"#0072B2", "#D55E00", "#009E73", "#CC79A7",
                                    "#E69F00", "#56B4E9", "#000000", "#F0E442"};
constexpr int kNumColours = 8;

std::string colour_attrs(size_t run) {
  return fmt::format("stroke=\"{}\"{}", kColours[run % kNumColours],
                     run >= kNumColours ? " stroke-dasharray=\"6 3\"" : "");
}

std::string xml_escape(std::string_view s) {
  std::string out;
  for (const char c : s) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&apos;";
        break;
      default:
        out += static_cast<unsigned char>(c) < 0x20 ? ' ' : c;  // XML 1.0 forbids them
    }
  }
  return out;
}

// Labels for evenly spaced ticks: as many decimals as the spacing needs, and one
// exponent for the whole axis when its values are very small or very large (0.5e-3,
// 1.0e-3, 1.5e-3).
std::vector<std::string> tick_labels(const std::vector<double>& ticks) {
  const double spacing = ticks.size() > 1 ? ticks[1] - ticks[0] : 1;
  double largest = 0;
  for (const double v : ticks) largest = std::max(largest, std::abs(v));
  const int spacing_digits = static_cast<int>(std::floor(std::log10(spacing) + 1e-9));
  const bool scientific = largest > 0 && (largest < 1e-2 || largest >= 1e6);
  const int e = scientific ? static_cast<int>(std::floor(std::log10(largest) + 1e-9)) : 0;
  std::vector<std::string> labels;
  for (const double v : ticks) {
    const std::string digits =
        fmt::format("{:.{}f}", v / std::pow(10.0, e), std::clamp(e - spacing_digits, 0, 8));
    labels.push_back(v == 0 ? "0" : scientific ? digits + "e" + std::to_string(e) : digits);
  }
  return labels;
}

struct Axis {  // data [lo, hi] onto pixels [p0, p1]
  double lo, hi, p0, p1;
  double at(double v) const { return p0 + (v - lo) / (hi - lo) * (p1 - p0); }
};

// [lo, hi] over the series, widened by 5% each side (a flat line by 10% of its value).
std::pair<double, double> value_range(const std::vector<const Series*>& series) {
  double lo = INFINITY, hi = -INFINITY;
  for (const Series* s : series)
    for (const double v : s->values) lo = std::min(lo, v), hi = std::max(hi, v);
  if (!(hi >= lo)) return {0, 1};  // no data
  const double pad = hi > lo ? 0.05 * (hi - lo) : (lo != 0 ? 0.1 * std::abs(lo) : 1);
  return {lo - pad, hi + pad};
}

using Points = std::vector<std::pair<double, double>>;  // pixels

// At most four points per pixel column (its first, lowest, highest and last, in
// order): a long run stays a small file and its spikes stay visible.
Points thin_out(const Points& p) {
  Points out;
  for (size_t i = 0; i < p.size();) {
    size_t j = i, low = i, high = i;
    for (; j < p.size() && std::floor(p[j].first) == std::floor(p[i].first); ++j) {
      if (p[j].second < p[low].second) low = j;
      if (p[j].second > p[high].second) high = j;
    }
    size_t keep[] = {i, low, high, j - 1};
    std::sort(std::begin(keep), std::end(keep));
    for (size_t k = 0; k < 4; ++k)
      if (k == 0 || keep[k] != keep[k - 1]) out.push_back(p[keep[k]]);
    i = j;
  }
  return out;
}

Points to_pixels(const Series& s, const Axis& x, const Axis& y) {
  Points p;
  for (size_t i = 0; i < s.steps.size(); ++i)
    p.emplace_back(x.at(static_cast<double>(s.steps[i])), y.at(s.values[i]));
  return p;
}

void polyline(std::string& svg, const Points& p, const std::string& cls, size_t run, double width,
              double opacity = 1) {
  if (p.empty()) return;
  if (p.size() == 1) {  // a line through one point would not show
    svg += fmt::format(
        "<circle class=\"{} run{}\" cx=\"{:.1f}\" cy=\"{:.1f}\" r=\"2.5\" fill=\"{}\"/>\n", cls,
        run, p[0].first, p[0].second, kColours[run % kNumColours]);
    return;
  }
  svg +=
      fmt::format("<polyline class=\"{} run{}\" fill=\"none\" {} stroke-width=\"{}\"{} points=\"",
                  cls, run, colour_attrs(run), width,
                  opacity < 1 ? fmt::format(" stroke-opacity=\"{}\"", opacity) : std::string());
  for (const auto& [px, py] : p) fmt::format_to(std::back_inserter(svg), "{:.1f},{:.1f} ", px, py);
  svg.back() = '"';
  svg += "/>\n";
}

struct Panel {
  const char* title;
  Series RunCurves::*series;
};

}  // namespace

std::string render_svg(const std::vector<RunCurves>& runs, const PlotOptions& o) {
  const double W = o.width, H = o.height;
  std::string svg = fmt::format(
      "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{0}\" height=\"{1}\" viewBox=\"0 0 {0} "
      "{1}\">\n"
      "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
      "<g font-family=\"DejaVu Sans, Helvetica, Arial, sans-serif\" font-size=\"12\" "
      "fill=\"#222\">\n",
      o.width, o.height);
  double top = 10;
  if (!o.title.empty()) {
    svg += fmt::format(
        "<text x=\"{}\" y=\"30\" text-anchor=\"middle\" font-size=\"17\" "
        "font-weight=\"bold\">{}</text>\n",
        W / 2, xml_escape(o.title));
    top = 42;
  }
  // Legend: a short line and the name of each run, wrapped onto more rows as needed.
  double lx = 70;
  top += 14;
  for (size_t r = 0; r < runs.size(); ++r) {
    const double width = 34 + 7.2 * static_cast<double>(runs[r].label.size());
    if (lx > 70 && lx + width > W - 20) lx = 70, top += 20;
    svg += fmt::format(
        "<line class=\"legend\" x1=\"{0}\" y1=\"{1}\" x2=\"{2}\" y2=\"{1}\" {3} "
        "stroke-width=\"2.5\"/><text x=\"{4}\" y=\"{5}\">{6}</text>\n",
        lx, top - 4, lx + 22, colour_attrs(r), lx + 28, top, xml_escape(runs[r].label));
    lx += width + 16;
  }
  top += 10;

  // One step axis for every panel.
  double x_lo = INFINITY, x_hi = -INFINITY;
  for (const auto& run : runs)
    for (const Series* s : {&run.loss, &run.lr, &run.tokens_per_s, &run.grad_norm, &run.val_loss})
      if (!s->steps.empty())
        x_lo = std::min(x_lo, static_cast<double>(s->steps.front())),
        x_hi = std::max(x_hi, static_cast<double>(s->steps.back()));
  if (!(x_hi > x_lo)) x_lo = std::isfinite(x_lo) ? x_lo - 1 : 0, x_hi = x_lo + 2;

  const Panel panels[] = {{"loss (line: training, dots: validation)", &RunCurves::loss},
                          {"learning rate", &RunCurves::lr},
                          {"tokens/s", &RunCurves::tokens_per_s},
                          {"gradient norm", &RunCurves::grad_norm}};
  const double cell_w = W / 2, cell_h = (H - top) / 2;
  for (int p = 0; p < 4; ++p) {
    const Panel& panel = panels[p];
    const double cx = (p % 2) * cell_w, cy = top + (p / 2) * cell_h;
    const double left = cx + 72, right = cx + cell_w - 24, ptop = cy + 26,
                 bottom = cy + cell_h - 46;
    std::vector<const Series*> series;
    for (const auto& run : runs) {
      series.push_back(&(run.*panel.series));
      if (p == 0) series.push_back(&run.val_loss);
    }
    const auto [y_lo, y_hi] = value_range(series);
    const bool no_data =
        std::all_of(series.begin(), series.end(), [](const Series* s) { return s->steps.empty(); });
    const Axis x{x_lo, x_hi, left, right}, y{y_lo, y_hi, bottom, ptop};
    bool any_skipped = false;
    for (const auto& run : runs) any_skipped |= p == 0 && !run.skipped_steps.empty();
    svg += fmt::format(
        "<g class=\"panel\">\n<text x=\"{}\" y=\"{}\" font-weight=\"bold\">{}{}</text>\n", left,
        ptop - 9, xml_escape(panel.title),
        any_skipped ? " <tspan font-weight=\"normal\">(marks on the axis: skipped steps)</tspan>"
                    : "");
    // Grid lines and tick labels.
    const auto yt = nice_ticks(y_lo, y_hi, 5);
    const auto y_labels = tick_labels(yt);
    for (size_t i = 0; i < yt.size(); ++i)
      svg += fmt::format(
          "<line x1=\"{0}\" y1=\"{1:.1f}\" x2=\"{2}\" y2=\"{1:.1f}\" stroke=\"#e4e4e4\"/>"
          "<text class=\"tick\" x=\"{3}\" y=\"{4:.1f}\" text-anchor=\"end\">{5}</text>\n",
          left, y.at(yt[i]), right, left - 6, y.at(yt[i]) + 4, y_labels[i]);
    std::vector<double> xt;
    for (const double v : nice_ticks(x_lo, x_hi, 5))
      if (v == std::round(v)) xt.push_back(v);  // steps are whole numbers
    const auto x_labels = tick_labels(xt);
    for (size_t i = 0; i < xt.size(); ++i)
      svg += fmt::format(
          "<line x1=\"{0:.1f}\" y1=\"{1}\" x2=\"{0:.1f}\" y2=\"{2}\" stroke=\"#e4e4e4\"/>"
          "<text class=\"tick\" x=\"{0:.1f}\" y=\"{3}\" text-anchor=\"middle\">{4}</text>\n",
          x.at(xt[i]), ptop, bottom, bottom + 16, x_labels[i]);
    svg += fmt::format(
        "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#999\"/>\n"
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">step</text>\n",
        left, ptop, right - left, bottom - ptop, (left + right) / 2, bottom + 34);
    if (no_data)
      svg += fmt::format(
          "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" fill=\"#888\">no values in any "
          "run</text>\n",
          (left + right) / 2, (ptop + bottom) / 2);
    for (size_t r = 0; r < runs.size(); ++r) {
      // Training loss thin and light, so that the validation points stand out on it.
      polyline(svg, thin_out(to_pixels(runs[r].*panel.series, x, y)), "curve", r, p == 0 ? 1 : 1.5,
               p == 0 ? 0.6 : 1);
      if (p != 0) continue;
      const Points val = to_pixels(runs[r].val_loss, x, y);
      if (val.size() > 1) polyline(svg, val, "val", r, 2);  // one point: its marker alone
      for (const auto& [px, py] : val)
        svg += fmt::format(
            "<circle cx=\"{:.1f}\" cy=\"{:.1f}\" r=\"3.5\" fill=\"white\" {} "
            "stroke-width=\"2\"/>\n",
            px, py, colour_attrs(r));
      for (const int64_t step : runs[r].skipped_steps)  // a short mark on the bottom edge
        svg += fmt::format(
            "<line class=\"skipped\" x1=\"{0:.1f}\" y1=\"{1}\" x2=\"{0:.1f}\" y2=\"{2}\" "
            "{3} stroke-width=\"1.5\"/>\n",
            x.at(static_cast<double>(step)), bottom, bottom - 7, colour_attrs(r));
    }
    svg += "</g>\n";
  }
  svg += "</g>\n</svg>\n";
  return svg;
}

void check_svg_path(const fs::path& out) {
  std::string ext = out.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(),
                 [](unsigned char c) { return std::tolower(c); });
  KUMIKO_USER_CHECK(ext == ".svg", out.string(),
                    ": kumiko plot writes only SVG (vector, self-contained, no image library "
                    "needed); name the file .svg and convert it if needed, e.g. rsvg-convert -o "
                    "curves.png curves.svg");
}

void write_file_atomically(const fs::path& out, const std::string& text) {
  fs::path tmp = out;
  tmp += ".tmp." + std::to_string(::getpid());
  std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
  KUMIKO_USER_CHECK(f.good(), out.string(), ": cannot write (", std::strerror(errno), ")");
  f.write(text.data(), static_cast<std::streamsize>(text.size()));
  f.close();
  std::string problem;
  if (!f) problem = std::string(": cannot write (") + std::strerror(errno) + ")";
  std::error_code ec;
  if (problem.empty()) fs::rename(tmp, out, ec);
  if (ec) problem = ": cannot replace (" + ec.message() + ")";
  if (problem.empty()) return;
  fs::remove(tmp, ec);
  throw UserError(out.string() + problem);
}

}  // namespace kumiko::train
