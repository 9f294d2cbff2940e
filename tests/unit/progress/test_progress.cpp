// Progress with a fake clock and a string sink: which lines come out, when, and what
// they say.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "kumiko/core/progress.h"

namespace kumiko {
namespace {

using namespace std::chrono_literals;
using TimePoint = std::chrono::steady_clock::time_point;

// A clock that moves only when told to.
struct FakeClock {
  TimePoint now{std::chrono::hours(1000)};
  void tick(std::chrono::milliseconds d) { now += d; }
};

struct Capture {
  FakeClock clock;
  std::vector<std::string> out;

  ProgressOptions options(ProgressMode mode) {
    ProgressOptions o;
    o.mode = mode;
    o.sink = [this](const std::string& text) { out.push_back(text); };
    o.clock = [this] { return clock.now; };
    return o;
  }
};

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

// "  40% " as a status line shows it: a space, the percent right-aligned in 3.
std::string percent_field(int percent) {
  // Built by appending: "literal" + std::string trips GCC 12's -Wrestrict (a false alarm).
  std::string field(4 - std::to_string(percent).size(), ' ');
  field += std::to_string(percent) + "% ";
  return field;
}

TEST(ProgressFormat, Bytes) {
  EXPECT_EQ(format_bytes(0), "0 B");
  EXPECT_EQ(format_bytes(512), "512 B");
  EXPECT_EQ(format_bytes(999), "999 B");
  EXPECT_EQ(format_bytes(999.6), "1.00 kB");  // rounding moves it up a prefix
  EXPECT_EQ(format_bytes(1000), "1.00 kB");
  EXPECT_EQ(format_bytes(1234), "1.23 kB");
  EXPECT_EQ(format_bytes(9.996e6), "10.0 MB");
  EXPECT_EQ(format_bytes(45.34e6), "45.3 MB");
  EXPECT_EQ(format_bytes(123456789), "123 MB");
  EXPECT_EQ(format_bytes(2.68e9), "2.68 GB");
  EXPECT_EQ(format_bytes(3.5e12), "3.50 TB");
}

TEST(ProgressFormat, Counts) {
  EXPECT_EQ(format_count(0), "0");
  EXPECT_EQ(format_count(950), "950");
  EXPECT_EQ(format_count(1210), "1.21k");
  EXPECT_EQ(format_count(3.1e6), "3.10M");
  EXPECT_EQ(format_count(42.0e9), "42.0G");
}

TEST(ProgressFormat, DurationLikeTheTrainer) {
  EXPECT_EQ(format_duration(0), "0s");
  EXPECT_EQ(format_duration(4.6), "5s");
  EXPECT_EQ(format_duration(59.6), "1m00s");
  EXPECT_EQ(format_duration(62), "1m02s");
  EXPECT_EQ(format_duration(3599), "59m59s");
  EXPECT_EQ(format_duration(3 * 3600 + 5 * 60 + 10), "3h05m");
  EXPECT_EQ(format_duration(-3), "0s");
}

TEST(Progress, StatusLineShowsPercentAmountRateAndEta) {
  Capture c;
  Progress p("prepare: encoding", 2'680'000'000, "B", c.options(ProgressMode::log));
  c.clock.tick(3900ms);
  p.set(1'210'000'000);  // 45 % after 3.9 s: 310 MB/s, 1.47 GB left -> 4.7 s
  ASSERT_EQ(c.out.size(), 1u);
  EXPECT_EQ(c.out[0], "prepare: encoding  45% 1.21/2.68 GB 310 MB/s eta 5s");
  c.clock.tick(100ms);
  p.finish();
  ASSERT_EQ(c.out.size(), 2u);
  EXPECT_EQ(c.out[1], "prepare: encoding 1.21/2.68 GB in 4.0s (302 MB/s)");
}

TEST(Progress, ItemsUseCountPrefixesAndTheUnit) {
  Capture c;
  Progress p("tokens", 2'680'000, "tokens", c.options(ProgressMode::log));
  c.clock.tick(2s);
  p.advance(1'210'000);
  ASSERT_EQ(c.out.size(), 1u);
  EXPECT_EQ(c.out[0], "tokens  45% 1.21/2.68M tokens 605k tokens/s eta 2s");
}

TEST(Progress, LogModePrintsOneLinePerTenPercentAndTheSummary) {
  Capture c;
  Progress p("work", 1000, "B", c.options(ProgressMode::log));
  for (int i = 0; i < 100; ++i) {
    c.clock.tick(1s);
    p.advance(10);
  }
  ASSERT_EQ(c.out.size(), 9u);  // 10 % ... 90 %; 100 % is the summary's
  for (int i = 0; i < 9; ++i)
    EXPECT_TRUE(contains(c.out[i], percent_field(10 * (i + 1)))) << c.out[i];
  p.finish();
  ASSERT_EQ(c.out.size(), 10u);
  EXPECT_EQ(c.out[9], "work 1.00 kB in 1m40s (10 B/s)");
  p.finish();  // once only
  EXPECT_EQ(c.out.size(), 10u);
}

TEST(Progress, LogModeJumpOverSeveralStepsPrintsOneLine) {
  Capture c;
  Progress p("work", 1000, "B", c.options(ProgressMode::log));
  c.clock.tick(1s);
  p.advance(350);  // crosses 10, 20 and 30 %
  ASSERT_EQ(c.out.size(), 1u);
  EXPECT_TRUE(contains(c.out[0], percent_field(35)));
  c.clock.tick(1s);
  p.advance(10);  // 36 %: same step
  EXPECT_EQ(c.out.size(), 1u);
  c.clock.tick(1s);
  p.advance(50);  // 41 %
  ASSERT_EQ(c.out.size(), 2u);
  EXPECT_TRUE(contains(c.out[1], percent_field(41)));
}

TEST(Progress, LogModeStepIsConfigurable) {
  Capture c;
  ProgressOptions o = c.options(ProgressMode::log);
  o.log_every_percent = 25;
  Progress p("work", 100, "B", o);
  for (int i = 0; i < 100; ++i) {
    c.clock.tick(1s);
    p.advance(1);
  }
  ASSERT_EQ(c.out.size(), 3u);
  EXPECT_TRUE(contains(c.out[0], percent_field(25)));
  EXPECT_TRUE(contains(c.out[1], percent_field(50)));
  EXPECT_TRUE(contains(c.out[2], percent_field(75)));
}

TEST(Progress, NothingCloserThanTheMinimumIntervalExceptTheSummary) {
  Capture c;
  Progress p("work", 1000, "B", c.options(ProgressMode::log));  // min_interval_s 0.2
  p.advance(500);  // no time has passed: too early for a line
  EXPECT_TRUE(c.out.empty());
  c.clock.tick(100ms);
  p.advance(100);
  EXPECT_TRUE(c.out.empty());
  c.clock.tick(100ms);  // 0.2 s since the start: the pending step is logged now
  p.advance(10);
  ASSERT_EQ(c.out.size(), 1u);
  EXPECT_TRUE(contains(c.out[0], percent_field(61)));
  c.clock.tick(40ms);
  p.advance(300);  // 91 %, 0.04 s after the last line
  EXPECT_EQ(c.out.size(), 1u);
  p.finish();  // the summary is never held back
  ASSERT_EQ(c.out.size(), 2u);
  EXPECT_EQ(c.out[1], "work 0.91/1.00 kB in 0.2s (3.79 kB/s)");
}

TEST(Progress, TtyModeRedrawsInPlaceAtMostFiveTimesASecond) {
  Capture c;
  Progress p("work", 100, "B", c.options(ProgressMode::tty));
  for (int i = 0; i < 100; ++i) {
    c.clock.tick(50ms);  // 20 updates a second
    p.advance(1);
  }
  ASSERT_EQ(c.out.size(), 25u);  // one redraw per 0.2 s over 5 s
  for (const std::string& text : c.out) {
    EXPECT_EQ(text.front(), '\r') << text;
    EXPECT_FALSE(contains(text, "\n")) << text;
  }
  EXPECT_EQ(c.out[0], "\rwork   4% 4/100 B 20 B/s eta 5s");
  EXPECT_EQ(c.out.back(), "\rwork 100% 100/100 B 20 B/s eta 0s");
  p.finish();
  ASSERT_EQ(c.out.size(), 26u);
  const std::string& summary = c.out.back();
  EXPECT_EQ(summary.front(), '\r');
  EXPECT_EQ(summary.back(), '\n');
  EXPECT_TRUE(summary.starts_with("\rwork 100 B in 5.0s (20 B/s)")) << summary;
  // The shorter summary blanks the rest of the longer line under it.
  EXPECT_EQ(summary.size(), c.out[24].size() + 1);
}

TEST(Progress, TtyModeLineEndsWhenTheWorkIsAbandoned) {
  Capture c;
  {
    Progress p("work", 100, "B", c.options(ProgressMode::tty));
    c.clock.tick(1s);
    p.advance(10);
    ASSERT_EQ(c.out.size(), 1u);
  }  // no finish(): e.g. an exception while writing
  ASSERT_EQ(c.out.size(), 2u);
  EXPECT_EQ(c.out[1], "\n");
}

TEST(Progress, TtyModeSummaryAloneWhenNothingWasDrawn) {
  Capture c;
  Progress p("work", 100, "B", c.options(ProgressMode::tty));
  p.advance(100);
  c.clock.tick(100ms);
  p.finish();
  ASSERT_EQ(c.out.size(), 1u);
  EXPECT_EQ(c.out[0], "work 100 B in 0.1s (1.00 kB/s)\n");
}

TEST(Progress, ZeroTotal) {
  Capture c;
  Progress p("empty", 0, "B", c.options(ProgressMode::log));
  c.clock.tick(1s);
  p.advance(0);
  p.set(0);
  EXPECT_TRUE(c.out.empty());
  p.finish();
  ASSERT_EQ(c.out.size(), 1u);
  EXPECT_EQ(c.out[0], "empty 0 B in 1.0s (0 B/s)");

  Capture t;
  Progress q("empty", 0, "B", t.options(ProgressMode::tty));
  t.clock.tick(1s);
  q.advance(0);
  ASSERT_EQ(t.out.size(), 1u);
  EXPECT_EQ(t.out[0], "\rempty 100% 0/0 B 0 B/s eta 0s");
}

TEST(Progress, OvershootShowsAHundredPercentAndCountsEverything) {
  Capture c;
  Progress p("work", 100, "B", c.options(ProgressMode::tty));
  c.clock.tick(1s);
  p.set(150);
  ASSERT_EQ(c.out.size(), 1u);
  EXPECT_EQ(c.out[0], "\rwork 100% 100/100 B 100 B/s eta 0s");
  EXPECT_EQ(p.done(), 150);
  p.finish();
  EXPECT_TRUE(c.out.back().starts_with("\rwork 150 B in 1.0s (150 B/s)")) << c.out.back();

  Capture l;
  Progress q("work", 100, "B", l.options(ProgressMode::log));
  l.clock.tick(1s);
  q.advance(50);
  l.clock.tick(1s);
  q.advance(200);  // past the end: no status line, the summary tells
  ASSERT_EQ(l.out.size(), 1u);
  q.finish();
  ASSERT_EQ(l.out.size(), 2u);
  EXPECT_EQ(l.out[1], "work 250 B in 2.0s (125 B/s)");
}

TEST(Progress, OffModeCountsButPrintsNothing) {
  Capture c;
  Progress p("work", 100, "B", c.options(ProgressMode::off));
  EXPECT_EQ(p.mode(), ProgressMode::off);
  c.clock.tick(1s);
  p.advance(60);
  p.finish();
  EXPECT_EQ(p.done(), 60);
  EXPECT_TRUE(c.out.empty());
}

TEST(Progress, ConcurrentAdvanceAddsUpExactly) {
  constexpr int kThreads = 8;
  constexpr int kPerThread = 20000;
  std::vector<std::string> out;
  std::atomic<int64_t> ticks{0};
  ProgressOptions o;
  o.mode = ProgressMode::log;
  o.sink = [&out](const std::string& line) { out.push_back(line); };  // called under the lock
  o.clock = [&ticks] { return TimePoint(std::chrono::seconds(ticks.fetch_add(1))); };
  Progress p("work", int64_t{kThreads} * kPerThread, "items", o);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back([&p] {
      for (int i = 0; i < kPerThread; ++i) p.advance(1);
    });
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(p.done(), int64_t{kThreads} * kPerThread);
  // Each call moves the clock by 1 s, so every 10 % step is logged exactly once.
  ASSERT_EQ(out.size(), 9u);
  for (int i = 0; i < 9; ++i) EXPECT_TRUE(contains(out[i], percent_field(10 * (i + 1)))) << out[i];
  p.finish();
  ASSERT_EQ(out.size(), 10u);
  EXPECT_TRUE(out[9].starts_with("work 160k items in ")) << out[9];
}

TEST(Progress, RejectsBadArguments) {
  Capture c;
  EXPECT_ANY_THROW(Progress("work", -1, "B", c.options(ProgressMode::log)));
  ProgressOptions o = c.options(ProgressMode::log);
  o.log_every_percent = 0;
  EXPECT_ANY_THROW(Progress("work", 100, "B", o));
}

}  // namespace
}  // namespace kumiko
