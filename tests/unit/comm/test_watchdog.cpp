// The communication watchdog (include/kumiko/comm/watchdog.h) without MPI: slots,
// groups, the cost of registration, and the exit with code 77 and one message when
// an operation stalls or a poller reports an error.
#include "kumiko/comm/watchdog.h"

#include <gtest/gtest.h>

#include <chrono>
#include <thread>

namespace kumiko::comm {
namespace {

TEST(Watchdog, GroupsAreInterned) {
  const WatchGroup* a = Watchdog::group("dp", "0,1,2,3");
  EXPECT_EQ(a, Watchdog::group("dp", "0,1,2,3"));
  EXPECT_NE(a, Watchdog::group("dp", "4,5,6,7"));
  EXPECT_NE(a, Watchdog::group("tp", "0,1,2,3"));
  EXPECT_EQ(a->name, "dp");
  EXPECT_EQ(a->ranks, "0,1,2,3");
}

TEST(Watchdog, SlotsAreTakenAndReleased) {
  const WatchGroup* g = Watchdog::group("world", "0,1");
  const int before = Watchdog::in_flight();
  std::vector<int> slots;
  for (int i = 0; i < 10; ++i) slots.push_back(Watchdog::begin("all_reduce", g));
  EXPECT_EQ(Watchdog::in_flight(), before + 10);
  for (int i = 0; i < 10; ++i)
    for (int j = i + 1; j < 10; ++j) EXPECT_NE(slots[i], slots[j]);
  for (int s : slots) Watchdog::end(s);
  EXPECT_EQ(Watchdog::in_flight(), before);
  {
    WatchScope scope("send", g, 1);
    EXPECT_EQ(Watchdog::in_flight(), before + 1);
  }
  EXPECT_EQ(Watchdog::in_flight(), before);
  Watchdog::end(-1);  // an unwatched operation: no-op
}

TEST(Watchdog, FullTableLeavesExtraOperationsUnwatched) {
  const WatchGroup* g = Watchdog::group("world", "0,1");
  std::vector<int> slots;
  for (int i = 0; i < 300; ++i) slots.push_back(Watchdog::begin("all_reduce", g));
  EXPECT_EQ(slots.back(), -1);
  for (int s : slots) Watchdog::end(s);
  EXPECT_EQ(Watchdog::in_flight(), 0);
}

// Registration is on the hot path of every collective: it must cost well under a
// microsecond (a clock read and one compare-and-swap).
TEST(Watchdog, RegistrationIsCheap) {
  const WatchGroup* g = Watchdog::group("dp", "0,1");
  constexpr int kOps = 1'000'000;
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < kOps; ++i) Watchdog::end(Watchdog::begin("all_reduce", g));
  const double ns = std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0).count() / kOps;
  std::printf("begin+end: %.1f ns per operation\n", ns);
  EXPECT_LT(ns, 1000.0);
}

TEST(WatchdogDeathTest, StalledOperationEndsTheProcessWith77) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        Watchdog::set_rank(3);
        Watchdog::set_step(12);
        Watchdog::start(0.3);
        const int slot = Watchdog::begin("all_reduce", Watchdog::group("dp", "0,1,2,3"));
        (void)slot;
        std::this_thread::sleep_for(std::chrono::seconds(5));
        std::_Exit(0);  // not reached: the watchdog exits first
      },
      testing::ExitedWithCode(77),
      "rank 3: step 12: all_reduce on group 'dp' \\(world ranks 0,1,2,3\\) has not completed after "
      "0\\.[3-9] s .*ending the job \\(exit 77\\)");
}

TEST(WatchdogDeathTest, PeerIsNamedForPointToPoint) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        Watchdog::set_rank(1);
        Watchdog::set_step(4);
        Watchdog::start(0.2);
        WatchScope scope("recv", Watchdog::group("pp", "0,1"), 0);
        std::this_thread::sleep_for(std::chrono::seconds(5));
        std::_Exit(0);
      },
      testing::ExitedWithCode(77), "rank 1: step 4: recv from world rank 0 on group 'pp'");
}

TEST(WatchdogDeathTest, PollerErrorRunsAbortHandlersAndExits77) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        Watchdog::add_handler([] { std::fprintf(stderr, "abort handler ran\n"); },
                              [] { return std::string("NCCL asynchronous error on group 'dp'"); });
        Watchdog::start(100);
        std::this_thread::sleep_for(std::chrono::seconds(5));
        std::_Exit(0);
      },
      testing::ExitedWithCode(77), "NCCL asynchronous error on group 'dp'(.|\n)*abort handler ran");
}

TEST(Watchdog, FinishedOperationsNeverFire) {
  Watchdog::start(0.2);
  const WatchGroup* g = Watchdog::group("world", "0,1");
  for (int i = 0; i < 20; ++i) {  // 1 s of short operations, each well under the timeout
    WatchScope scope("all_reduce", g);
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_TRUE(Watchdog::running());
  Watchdog::stop();
  EXPECT_FALSE(Watchdog::running());
}

}  // namespace
}  // namespace kumiko::comm
