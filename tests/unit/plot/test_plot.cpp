// kumiko plot's library half: metrics.jsonl into curves (later lines win, evaluation
// points apart, null and event lines left out), the SVG (well-formed, one polyline
// per run and panel, ticks, legend, escaping) and the user errors.
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "kumiko/core/error.h"
#include "kumiko/train/plot.h"

namespace kumiko::train {
namespace {

namespace fs = std::filesystem;

class PlotTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::temp_directory_path() / ("kumiko-test-plot-" + std::to_string(::getpid()));
    fs::remove_all(root_);
    fs::create_directories(root_);
  }
  void TearDown() override { fs::remove_all(root_); }

  // A run folder `name` whose metrics.jsonl holds `text` as given.
  fs::path run_with(const std::string& name, const std::string& text) {
    const fs::path dir = root_ / name;
    fs::create_directories(dir);
    std::ofstream(dir / "metrics.jsonl", std::ios::binary) << text;
    return dir;
  }

  fs::path root_;
};

// A training-step line as the trainer writes it (mfu null: no peak configured).
std::string step_line(int64_t step, double loss, double lr, double grad_norm, double tps) {
  char buf[256];
  std::snprintf(
      buf, sizeof buf,
      "{\"step\":%lld,\"loss\":%.8g,\"lr\":%.8g,\"grad_norm\":%.8g,\"tokens_per_s\":%.1f,"
      "\"mfu\":null,\"step_s\":0.08,\"comm_s\":0.0,\"bubble\":0.0,\"mem_peak_mb\":312.5}\n",
      static_cast<long long>(step), loss, lr, grad_norm, tps);
  return buf;
}

std::string val_line(int64_t step, double val) {
  return "{\"step\":" + std::to_string(step) + ",\"val_loss\":" + std::to_string(val) +
         ",\"val_ppl\":" + std::to_string(std::exp(val)) + "}\n";
}

// Seeded synthetic steps first..last: a decaying noisy loss, warmup then constant lr.
struct Synthetic {
  std::mt19937 rng;
  std::string lines(int64_t first, int64_t last, double offset) {
    std::normal_distribution<double> noise(0.0, 0.05);
    std::string s;
    for (int64_t t = first; t <= last; ++t)
      s += step_line(t, 4 + 4 * std::exp(-t / 20.0) + offset + noise(rng),
                     3e-3 * std::min(1.0, t / 10.0), 0.7 + std::abs(noise(rng)),
                     11000 + 2000 * noise(rng));
    return s;
  }
};

TEST_F(PlotTest, ReadsStepsValidationAndSkippedLinesApart) {
  Synthetic gen{std::mt19937(7)};
  const std::string text = gen.lines(1, 4, 0) +
                           "{\"step\":5,\"skipped\":true,\"skipped_total\":1}\n" +
                           gen.lines(6, 20, 0) + val_line(20, 4.9) + gen.lines(21, 40, 0) +
                           val_line(40, 4.5) + "{\"step\":40,\"ckpt_blocked_s\":0.01}\n";
  const RunCurves run = read_run(run_with("first", text));
  EXPECT_EQ(run.label, "first");
  ASSERT_EQ(run.loss.steps.size(), 39u);
  EXPECT_EQ(run.loss.steps.front(), 1);
  EXPECT_EQ(run.loss.steps[4], 6);  // step 5 was skipped
  EXPECT_EQ(run.skipped_steps, std::vector<int64_t>({5}));
  EXPECT_EQ(run.val_loss.steps, std::vector<int64_t>({20, 40}));
  EXPECT_DOUBLE_EQ(run.val_loss.values[1], 4.5);
  EXPECT_EQ(run.lr.steps.size(), 39u);
  EXPECT_EQ(run.tokens_per_s.steps.size(), 39u);
  EXPECT_EQ(run.grad_norm.steps.size(), 39u);
  EXPECT_NEAR(run.lr.values[1], 6e-4, 1e-12);
  for (size_t i = 1; i < run.loss.steps.size(); ++i)
    EXPECT_LT(run.loss.steps[i - 1], run.loss.steps[i]);
}

TEST_F(PlotTest, ResumedRunLaterLineWins) {
  // First attempt: steps 1..50 (step 45 skipped); resumed from the step-30 checkpoint
  // it appends 31..60, where step 33 is skipped and step 45 is not.
  Synthetic gen{std::mt19937(11)};
  std::string text = gen.lines(1, 32, 0) + gen.lines(33, 44, 0) +
                     "{\"step\":45,\"skipped\":1,\"skipped_total\":1}\n" + gen.lines(46, 50, 0) +
                     val_line(40, 5.25);
  text += gen.lines(31, 32, 10) + "{\"step\":33,\"skipped\":1,\"skipped_total\":1}\n" +
          gen.lines(34, 60, 10) + val_line(40, 5.5) + val_line(60, 5.0);
  const RunCurves run = read_run(run_with("resumed", text), "custom");
  EXPECT_EQ(run.label, "custom");
  EXPECT_EQ(run.skipped_steps, std::vector<int64_t>({33}));
  ASSERT_EQ(run.loss.steps.size(), 59u);  // 1..60 without 33, each once
  for (size_t i = 0; i < run.loss.steps.size(); ++i) {
    const int64_t step = run.loss.steps[i];
    EXPECT_EQ(step, static_cast<int64_t>(i) + (i < 32 ? 1 : 2));
    // The resumed lines carry a +10 offset: every step from 31 on comes from them.
    EXPECT_EQ(run.loss.values[i] > 12.0, step >= 31)
        << "step " << step << ": " << run.loss.values[i];
  }
  EXPECT_EQ(run.val_loss.steps, std::vector<int64_t>({40, 60}));
  EXPECT_DOUBLE_EQ(run.val_loss.values[0], 5.5);
}

TEST_F(PlotTest, NullValuesAndEventLinesAreLeftOut) {
  std::string text = step_line(1, 8.0, 1e-4, 2.0, 1000);
  text +=
      "{\"step\":2,\"loss\":null,\"lr\":2e-4,\"grad_norm\":null,\"tokens_per_s\":1000.0,\"mfu\":"
      "null}\n";
  text += step_line(3, 7.0, 3e-4, 1.5, 1000);
  text +=
      "{\"step\":4,\"spike\":1,\"spike_action\":\"stop\",\"loss\":99.0}\n";  // an event, not a step
  text += "{\"step\":3,\"future_key\":[1,2,{\"x\":\"y\"}]}\n";
  const RunCurves run = read_run(run_with("nulls", text));
  EXPECT_EQ(run.loss.steps, std::vector<int64_t>({1, 3}));
  EXPECT_EQ(run.lr.steps, std::vector<int64_t>({1, 2, 3}));
  EXPECT_EQ(run.grad_norm.steps, std::vector<int64_t>({1, 3}));
  EXPECT_TRUE(run.skipped_steps.empty());
}

TEST_F(PlotTest, UnterminatedLastLineIsStillBeingWritten) {
  const RunCurves run = read_run(run_with(
      "live", step_line(1, 8, 1e-4, 1, 1) + step_line(2, 7, 1e-4, 1, 1) + "{\"step\":3,\"lo"));
  EXPECT_EQ(run.loss.steps, std::vector<int64_t>({1, 2}));
}

// The message of the UserError that `f` throws ("" when it throws none).
template <typename F>
std::string user_error(F f) {
  try {
    f();
  } catch (const UserError& e) {
    const std::string message = e.what();
    EXPECT_EQ(message.find('\n'), std::string::npos) << "not one line: " << message;
    return message;
  }
  return "";
}

TEST_F(PlotTest, UserErrorsNameTheFolderFileAndLine) {
  const fs::path missing = root_ / "nope";
  EXPECT_EQ(user_error([&] { read_run(missing); }), missing.string() + ": no such run folder");

  fs::create_directories(root_ / "empty_dir");
  EXPECT_NE(user_error([&] {
              read_run(root_ / "empty_dir");
            }).find((root_ / "empty_dir" / "metrics.jsonl").string() + ": not found"),
            std::string::npos);

  const fs::path bad =
      run_with("bad", step_line(1, 8, 1e-4, 1, 1) + step_line(2, 7, 1e-4, 1, 1) +
                          "{\"step\":3,\"loss\":4.5,,}\n" + step_line(4, 6, 1e-4, 1, 1));
  const std::string at_line = user_error([&] { read_run(bad); });
  EXPECT_EQ(at_line.rfind((bad / "metrics.jsonl").string() + ":3: not a JSON line (column 22: ", 0),
            0u)
      << at_line;

  const fs::path wrong_type = run_with("wrong_type", "{\"step\":1,\"loss\":\"4.5\",\"lr\":1e-3}\n");
  EXPECT_NE(
      user_error([&] { read_run(wrong_type); }).find("metrics.jsonl:1: \"loss\" must be a number"),
      std::string::npos);
  const fs::path no_step = run_with("no_step", "{\"loss\":4.5,\"lr\":1e-3}\n");
  EXPECT_NE(
      user_error([&] { read_run(no_step); }).find("metrics.jsonl:1: \"step\" must be an integer"),
      std::string::npos);
  const fs::path array = run_with("array", "[1,2]\n");
  EXPECT_NE(
      user_error([&] { read_run(array); }).find(":1: expected one JSON object per line, got array"),
      std::string::npos);

  const fs::path no_steps =
      run_with("no_steps", "{\"step\":1,\"skipped\":1,\"skipped_total\":1}\n" + val_line(1, 8.0));
  EXPECT_NE(
      user_error([&] { read_run(no_steps); }).find("metrics.jsonl: no training steps in 2 lines"),
      std::string::npos);
  EXPECT_NE(user_error([&] {
              read_run(run_with("zero_lines", ""));
            }).find("no training steps in 0 lines"),
            std::string::npos);

  const std::string png = user_error([] { check_svg_path("curves.png"); });
  EXPECT_EQ(png.rfind("curves.png: kumiko plot writes only SVG (", 0), 0u) << png;
  EXPECT_NE(user_error([] { check_svg_path("curves"); }), "");
  EXPECT_NE(user_error([] { check_svg_path("svg"); }), "");
  EXPECT_EQ(user_error([] { check_svg_path("out/curves.svg"); }), "");
  EXPECT_EQ(user_error([] { check_svg_path("CURVES.SVG"); }), "");
}

TEST(NiceTicks, OneTwoFiveSpacingInsideTheRange) {
  EXPECT_EQ(nice_ticks(3.7, 8.4), std::vector<double>({4, 5, 6, 7, 8}));
  EXPECT_EQ(nice_ticks(1, 60), std::vector<double>({10, 20, 30, 40, 50, 60}));
  const auto small = nice_ticks(0, 3e-3);
  ASSERT_EQ(small.size(), 4u);  // 0, 1e-3, 2e-3, 3e-3
  EXPECT_DOUBLE_EQ(small[1], 1e-3);
  EXPECT_DOUBLE_EQ(small.back(), 3e-3);
  std::mt19937 rng(3);
  std::uniform_real_distribution<double> exponent(-6, 6), unit(0, 1);
  for (int trial = 0; trial < 500; ++trial) {
    const double scale = std::pow(10.0, exponent(rng));
    const double lo = (unit(rng) - 0.5) * scale, hi = lo + (0.01 + unit(rng)) * scale;
    const auto t = nice_ticks(lo, hi);
    ASSERT_GE(t.size(), 2u) << lo << " " << hi;
    ASSERT_LE(t.size(), 11u) << lo << " " << hi;
    const double spacing = t[1] - t[0];
    const double mantissa = spacing / std::pow(10.0, std::floor(std::log10(spacing) + 1e-9));
    EXPECT_TRUE(std::abs(mantissa - 1) < 1e-6 || std::abs(mantissa - 2) < 1e-6 ||
                std::abs(mantissa - 5) < 1e-6)
        << "spacing " << spacing;
    EXPECT_GE(t.front(), lo - 1e-9 * scale);
    EXPECT_LE(t.back(), hi + 1e-9 * scale);
  }
}

// Every tag the renderer writes is closed, in order, under one <svg> root; "" or the problem.
std::string tag_problem(const std::string& svg) {
  std::vector<std::string> open;
  int roots = 0;
  for (size_t i = svg.find('<'); i != std::string::npos; i = svg.find('<', i)) {
    const size_t end = svg.find('>', i);
    if (end == std::string::npos) return "unterminated tag at " + std::to_string(i);
    const std::string tag = svg.substr(i + 1, end - i - 1);
    i = end + 1;
    if (tag.empty()) return "empty tag";
    if (tag[0] == '?') continue;  // the XML declaration
    if (tag[0] == '/') {
      if (open.empty() || open.back() != tag.substr(1))
        return "unexpected </" + tag.substr(1) + ">";
      open.pop_back();
      continue;
    }
    const std::string name = tag.substr(0, tag.find_first_of(" /"));
    if (open.empty() && (++roots > 1 || name != "svg")) return "second root <" + name + ">";
    if (tag.back() != '/') open.push_back(name);
  }
  return open.empty() ? "" : "<" + open.back() + "> never closed";
}

size_t count(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t i = text.find(what); i != std::string::npos; i = text.find(what, i + 1)) ++n;
  return n;
}

TEST_F(PlotTest, SvgHasOneRootBalancedTagsCurvesTicksAndEscapedLegend) {
  Synthetic gen{std::mt19937(5)};
  const fs::path a = run_with(
      "run_a", gen.lines(1, 30, 0) + val_line(30, 4.9) + gen.lines(31, 60, 0) + val_line(60, 4.6));
  const fs::path b = run_with(
      "run_b", gen.lines(1, 20, 0.3) + val_line(20, 5.6) + gen.lines(21, 40, 0.3) +
                   "{\"step\":41,\"skipped\":1}\n" + gen.lines(42, 45, 0.3) + val_line(45, 5.1));
  const std::vector<RunCurves> runs = {read_run(a, "a<b&c \"q\""), read_run(b)};
  PlotOptions options;
  options.title = "lr sweep <1e-3> & more";
  const std::string svg = render_svg(runs, options);

  EXPECT_EQ(svg.rfind("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<svg ", 0), 0u);
  EXPECT_EQ(count(svg, "<svg"), 1u);
  EXPECT_EQ(tag_problem(svg), "");
  EXPECT_EQ(svg.find("http", svg.find("xmlns") + 40), std::string::npos) << "external reference";
  EXPECT_EQ(svg.find("<script"), std::string::npos);
  // One training curve per run and panel; one validation curve and its dots per run.
  EXPECT_EQ(count(svg, "<polyline class=\"curve run0\""), 4u);
  EXPECT_EQ(count(svg, "<polyline class=\"curve run1\""), 4u);
  EXPECT_EQ(count(svg, "<polyline class=\"val run0\""), 1u);
  EXPECT_EQ(count(svg, "<polyline class=\"val run1\""), 1u);
  EXPECT_EQ(count(svg, "<circle"), 4u);  // the validation points
  EXPECT_EQ(count(svg, "<line class=\"skipped\""), 1u);
  EXPECT_EQ(count(svg, "<g class=\"panel\">"), 4u);
  // Colours differ per run.
  EXPECT_NE(svg.find("class=\"curve run0\" fill=\"none\" stroke=\"#0072B2\""), std::string::npos);
  EXPECT_NE(svg.find("class=\"curve run1\" fill=\"none\" stroke=\"#D55E00\""), std::string::npos);
  // The step axis (1..60) of every panel has ticks 10..60, each labelled.
  for (int step = 10; step <= 60; step += 10)
    EXPECT_EQ(count(svg, "text-anchor=\"middle\">" + std::to_string(step) + "</text>"), 4u) << step;
  EXPECT_EQ(count(svg, ">step</text>"), 4u);
  // The loss axis (about 4..8.3) has integer ticks; the learning rate's are scientific.
  EXPECT_NE(svg.find("text-anchor=\"end\">6</text>"), std::string::npos);
  for (const char* lr : {"0.5e-3", "1.0e-3", "1.5e-3", "2.0e-3", "2.5e-3", "3.0e-3"})
    EXPECT_NE(svg.find(std::string("text-anchor=\"end\">") + lr + "</text>"), std::string::npos)
        << lr;
  // Legend and title, escaped.
  EXPECT_NE(svg.find(">a&lt;b&amp;c &quot;q&quot;</text>"), std::string::npos);
  EXPECT_NE(svg.find(">run_b</text>"), std::string::npos);
  EXPECT_NE(svg.find(">lr sweep &lt;1e-3&gt; &amp; more</text>"), std::string::npos);
  EXPECT_EQ(svg.find("a<b"), std::string::npos);
}

TEST_F(PlotTest, LongRunStaysSmallAndKeepsItsSpike) {
  std::string text;
  for (int64_t t = 1; t <= 100000; ++t)
    text += step_line(t, 5.0 + 0.1 * std::sin(t * 0.01), 1e-3, t == 50000 ? 40.0 : 1.0, 1e4);
  const std::string svg = render_svg({read_run(run_with("long", text))});
  EXPECT_LT(svg.size(), 200'000u);
  // The grad_norm panel's curve rises to the top of its range at the spike: a point
  // 5% of the plot height below the frame's top (the range's margin).
  const size_t panel = svg.find(">gradient norm</text>");
  ASSERT_NE(panel, std::string::npos);
  const size_t frame = svg.find("<rect x=", panel), curve = svg.find("<polyline", panel);
  double x = 0, top = 0, width = 0, height = 0;
  ASSERT_EQ(
      std::sscanf(svg.c_str() + frame, "<rect x=\"%lf\" y=\"%lf\" width=\"%lf\" height=\"%lf\"", &x,
                  &top, &width, &height),
      4);
  const std::string points = svg.substr(curve, svg.find("/>", curve) - curve);
  double highest = 1e9;
  for (size_t i = points.find(','); i != std::string::npos; i = points.find(',', i + 1))
    highest = std::min(highest, std::atof(points.c_str() + i + 1));
  EXPECT_NEAR(highest, top + height * 0.05 / 1.1, 0.2);
}

TEST_F(PlotTest, WritesAtomicallyAndReplaces) {
  const fs::path out = root_ / "curves.svg";
  write_file_atomically(out, "first");
  write_file_atomically(out, "second");
  std::ifstream in(out);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(text, "second");
  EXPECT_EQ(std::distance(fs::directory_iterator(root_), fs::directory_iterator()), 1)
      << "a temporary file left";
  const fs::path nowhere = root_ / "no_dir" / "c.svg";
  EXPECT_EQ(user_error([&] {
              write_file_atomically(nowhere, "x");
            }).rfind(nowhere.string() + ": cannot write (", 0),
            0u);
}

}  // namespace
}  // namespace kumiko::train
