// Pipeline schedules: structure of every rank's list, pairing of sends and recvs,
// deadlock freedom under rendezvous semantics, and the simulated bubble against the
// formula. No model runs here.
#include <gtest/gtest.h>

#include <map>
#include <random>
#include <set>
#include <tuple>

#include "kumiko/core/error.h"
#include "kumiko/parallel/schedule.h"

namespace kumiko::parallel {
namespace {

struct Case {
  ScheduleKind kind;
  int pp, m, chunks;
};

// Every valid (kind, pp, m, chunks) of the issue: pp 2..4, m 1..8, interleaved with 2 chunks.
std::vector<Case> all_cases() {
  std::vector<Case> cases;
  for (int pp = 2; pp <= 4; ++pp)
    for (int m = 1; m <= 8; ++m) {
      cases.push_back({ScheduleKind::gpipe, pp, m, 1});
      cases.push_back({ScheduleKind::one_f_one_b, pp, m, 1});
      if (m % pp == 0) cases.push_back({ScheduleKind::interleaved, pp, m, 2});
    }
  return cases;
}

std::string name(const Case& c) {
  return to_string(c.kind) + " pp=" + std::to_string(c.pp) + " m=" + std::to_string(c.m) +
         " chunks=" + std::to_string(c.chunks);
}

bool is_comm(ActionType t) { return t != ActionType::forward && t != ActionType::backward; }

TEST(Schedule, ParseNames) {
  EXPECT_EQ(parse_schedule("gpipe"), ScheduleKind::gpipe);
  EXPECT_EQ(parse_schedule("1f1b"), ScheduleKind::one_f_one_b);
  EXPECT_EQ(parse_schedule("interleaved"), ScheduleKind::interleaved);
  try {
    parse_schedule("1F1B-interleaved");
    FAIL() << "no error";
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("parallel.pp_schedule"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("1F1B-interleaved"), std::string::npos) << e.what();
  }
}

void expect_user_error(ScheduleKind kind, int pp, int m, int chunks, const std::string& key) {
  try {
    build_schedule(kind, pp, 0, m, chunks);
    FAIL() << "no error for " << name({kind, pp, m, chunks});
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find(key), std::string::npos) << e.what();
    EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos) << e.what();
  }
  EXPECT_THROW(bubble_fraction(kind, pp, m, chunks), UserError);
}

TEST(Schedule, BadInputsAreUserErrors) {
  expect_user_error(ScheduleKind::one_f_one_b, 0, 4, 1, "parallel.pp");
  expect_user_error(ScheduleKind::gpipe, 2, 0, 1, "train.micro_batch");
  expect_user_error(ScheduleKind::one_f_one_b, 2, 4, 2, "parallel.pp_chunks");
  expect_user_error(ScheduleKind::interleaved, 2, 4, 1, "parallel.pp_chunks");
  expect_user_error(ScheduleKind::interleaved, 4, 6, 2, "multiple of parallel.pp");
  EXPECT_THROW(build_schedule(ScheduleKind::gpipe, 2, 2, 4), Error);  // rank out of range: a bug
  // 1f1b with fewer micro-batches than stages is allowed.
  EXPECT_NO_THROW(build_schedule(ScheduleKind::one_f_one_b, 4, 0, 2));
}

// Each (micro-batch, chunk) is forwarded and backwarded exactly once on each rank, the
// backward after the forward; every recv comes before the compute needing it and every
// send after the compute producing it.
TEST(Schedule, EveryMicroBatchOnceInOrder) {
  for (const Case& c : all_cases()) {
    for (int r = 0; r < c.pp; ++r) {
      SCOPED_TRACE(name(c) + " rank " + std::to_string(r));
      const auto list = build_schedule(c.kind, c.pp, r, c.m, c.chunks);
      const int stages = c.pp * c.chunks;
      std::map<std::tuple<int, int, int>, int> pos;  // (type, mb, chunk) -> index
      for (int i = 0; i < static_cast<int>(list.size()); ++i) {
        const Action& a = list[i];
        ASSERT_GE(a.micro_batch, 0);
        ASSERT_LT(a.micro_batch, c.m);
        ASSERT_GE(a.virtual_stage, 0);
        ASSERT_LT(a.virtual_stage, c.chunks);
        auto key = std::make_tuple(static_cast<int>(a.type), a.micro_batch, a.virtual_stage);
        ASSERT_EQ(pos.count(key), 0u) << "duplicate " << to_string(a);
        pos[key] = i;
      }
      for (int mb = 0; mb < c.m; ++mb)
        for (int ch = 0; ch < c.chunks; ++ch) {
          const int s = ch * c.pp + r;
          auto at = [&](ActionType t) {
            auto it = pos.find({static_cast<int>(t), mb, ch});
            return it == pos.end() ? -1 : it->second;
          };
          const int f = at(ActionType::forward), b = at(ActionType::backward);
          ASSERT_GE(f, 0) << "no forward of mb " << mb << " chunk " << ch;
          ASSERT_GT(b, f) << "backward of mb " << mb << " chunk " << ch << " not after forward";
          const int ra = at(ActionType::recv_activation), sa = at(ActionType::send_activation);
          const int rg = at(ActionType::recv_gradient), sg = at(ActionType::send_gradient);
          EXPECT_EQ(ra >= 0, s > 0);
          EXPECT_EQ(sg >= 0, s > 0);
          EXPECT_EQ(sa >= 0, s < stages - 1);
          EXPECT_EQ(rg >= 0, s < stages - 1);
          if (ra >= 0) {
            EXPECT_LT(ra, f);
          }
          if (sa >= 0) {
            EXPECT_GT(sa, f);
          }
          if (rg >= 0) {
            EXPECT_LT(rg, b);
          }
          if (sg >= 0) {
            EXPECT_GT(sg, b);
          }
        }
      EXPECT_EQ(list.size(), pos.size());
    }
  }
}

TEST(Schedule, InFlightLimits) {
  for (const Case& c : all_cases()) {
    for (int r = 0; r < c.pp; ++r) {
      SCOPED_TRACE(name(c) + " rank " + std::to_string(r));
      const int n = max_in_flight(build_schedule(c.kind, c.pp, r, c.m, c.chunks));
      if (c.kind == ScheduleKind::gpipe) {
        EXPECT_EQ(n, c.m);
      }
      if (c.kind == ScheduleKind::one_f_one_b) {
        EXPECT_EQ(n, std::min(c.m, c.pp - r));
        EXPECT_LE(n, c.pp - r);
      }
      if (c.kind == ScheduleKind::interleaved) {
        // Megatron: warm-up 2 (pp - r - 1) + (v - 1) pp forwards, plus the steady one.
        const int warm = 2 * (c.pp - r - 1) + (c.chunks - 1) * c.pp;
        EXPECT_EQ(n, std::min(warm + 1, c.m * c.chunks));
      }
    }
  }
  // The counter itself.
  const std::vector<Action> list = {{ActionType::forward, 0, 0, -1},
                                    {ActionType::forward, 1, 0, -1},
                                    {ActionType::backward, 0, 0, -1},
                                    {ActionType::forward, 2, 0, -1},
                                    {ActionType::forward, 2, 1, -1}};
  EXPECT_EQ(max_in_flight(list), 3);
}

// Across ranks, every send has exactly one recv with the same micro-batch and direction,
// on the stage it names, naming the sender's stage back.
TEST(Schedule, SendsAndRecvsPairUp) {
  for (const Case& c : all_cases()) {
    SCOPED_TRACE(name(c));
    const auto lists = build_all_schedules(c.kind, c.pp, c.m, c.chunks);
    ASSERT_EQ(static_cast<int>(lists.size()), c.pp);
    // (is_activation, mb, from_stage, to_stage) -> count of sends minus recvs, and counts.
    std::map<std::tuple<bool, int, int, int>, int> sends, recvs;
    for (int r = 0; r < c.pp; ++r) {
      EXPECT_EQ(lists[r], build_schedule(c.kind, c.pp, r, c.m, c.chunks));
      for (const Action& a : lists[r]) {
        if (!is_comm(a.type)) {
          EXPECT_EQ(a.peer_stage, -1);
          continue;
        }
        const int s = a.virtual_stage * c.pp + r;
        const bool act =
            a.type == ActionType::send_activation || a.type == ActionType::recv_activation;
        const bool send =
            a.type == ActionType::send_activation || a.type == ActionType::send_gradient;
        EXPECT_EQ(a.peer_stage, s + ((act == send) ? 1 : -1)) << to_string(a);
        if (send) {
          ++sends[{act, a.micro_batch, s, a.peer_stage}];
        } else {
          ++recvs[{act, a.micro_batch, a.peer_stage, s}];
        }
      }
    }
    EXPECT_EQ(sends, recvs);
    const int stages = c.pp * c.chunks;
    EXPECT_EQ(static_cast<int>(sends.size()), 2 * c.m * (stages - 1));
    for (const auto& [k, n] : sends) EXPECT_EQ(n, 1);
  }
}

// NCCL's point-to-point operations have no tags: between two ranks, the k-th send
// meets the k-th receive. The pipeline runs on NCCL (backend = cuda, backend.comm =
// nccl) only if, for every ordered pair of ranks, the sender posts its messages in
// the order the receiver posts the matching receives.
TEST(Schedule, PointToPointOrderMatchesWithoutTags) {
  for (const Case& c : all_cases()) {
    SCOPED_TRACE(name(c));
    const auto lists = build_all_schedules(c.kind, c.pp, c.m, c.chunks);
    // (from rank, to rank) -> the messages (is_activation, mb, from_stage, to_stage) in posting order.
    std::map<std::pair<int, int>, std::vector<std::tuple<bool, int, int, int>>> sent, received;
    for (int r = 0; r < c.pp; ++r)
      for (const Action& a : lists[r]) {
        if (!is_comm(a.type)) continue;
        const int s = a.virtual_stage * c.pp + r;
        const bool act = a.type == ActionType::send_activation || a.type == ActionType::recv_activation;
        const bool send = a.type == ActionType::send_activation || a.type == ActionType::send_gradient;
        const int peer = a.peer_stage % c.pp;
        if (send)
          sent[{r, peer}].push_back({act, a.micro_batch, s, a.peer_stage});
        else
          received[{peer, r}].push_back({act, a.micro_batch, a.peer_stage, s});
      }
    EXPECT_EQ(sent, received);
  }
}

TEST(Schedule, SimulatorFindsDeadlock) {
  // Two ranks that both send first: a rendezvous deadlock.
  std::vector<std::vector<Action>> lists = {{{ActionType::forward, 0, 0, -1},
                                             {ActionType::send_activation, 0, 0, 1},
                                             {ActionType::recv_gradient, 0, 0, 1},
                                             {ActionType::backward, 0, 0, -1}},
                                            {{ActionType::send_gradient, 0, 0, 0},
                                             {ActionType::recv_activation, 0, 0, 0},
                                             {ActionType::forward, 0, 0, -1},
                                             {ActionType::backward, 0, 0, -1}}};
  EXPECT_THROW(simulate_lists(lists, 1), Error);
  // Rank 1 receiving first makes it run: 1 + 1 + 2 + 2 time units, each rank idle for 3.
  lists[1] = {{ActionType::recv_activation, 0, 0, 0},
              {ActionType::forward, 0, 0, -1},
              {ActionType::backward, 0, 0, -1},
              {ActionType::send_gradient, 0, 0, 0}};
  const SimResult res = simulate_lists(lists, 1, 1, 2);
  EXPECT_DOUBLE_EQ(res.makespan, 6);
  EXPECT_DOUBLE_EQ(res.idle[0], 3);
  EXPECT_DOUBLE_EQ(res.idle[1], 3);
  // A recv whose send never comes is a deadlock, too.
  lists[0].erase(lists[0].begin() + 1);
  EXPECT_THROW(simulate_lists(lists, 1), Error);
}

// Deadlock-free with rendezvous sends, and the measured bubble against the formula.
TEST(Schedule, SimulatedBubble) {
  std::mt19937 rng(20240611);
  std::uniform_real_distribution<double> ratio(0.5, 3.0);
  for (const Case& c : all_cases()) {
    SCOPED_TRACE(name(c));
    const double formula = bubble_fraction(c.kind, c.pp, c.m, c.chunks);
    const SimResult eq = simulate(c.kind, c.pp, c.m, c.chunks, 1.0, 1.0);
    const SimResult typical = simulate(c.kind, c.pp, c.m, c.chunks, 1.0, 2.0);
    const double bwd = ratio(rng);
    const SimResult any = simulate(c.kind, c.pp, c.m, c.chunks, 1.0, bwd);
    ASSERT_EQ(static_cast<int>(eq.idle.size()), c.pp);
    // Makespan is at least one rank's work.
    EXPECT_GE(eq.makespan, 2.0 * c.m - 1e-9);
    if (c.kind != ScheduleKind::interleaved) {
      EXPECT_NEAR(eq.bubble(), formula, 1e-9);
      EXPECT_NEAR(typical.bubble(), formula, 1e-9);
      EXPECT_NEAR(any.bubble(), formula, 1e-9) << "bwd_time " << bwd;
      EXPECT_NEAR(eq.makespan, 2.0 * (c.m + c.pp - 1), 1e-9);
    } else {
      // Interleaved: the lists are placed for backward = 2 x forward; there they reach the
      // formula exactly. At other ratios (rendezvous sends in a fixed order) they lose some
      // of the gain (at fwd = bwd, pp 3, m 6: 0.273 against 1f1b's 0.25) but stay close.
      EXPECT_NEAR(typical.bubble(), formula, 1e-9);
      const double flat = bubble_fraction(ScheduleKind::one_f_one_b, c.pp, c.m, 1);
      EXPECT_LT(typical.bubble(), flat);
      EXPECT_LT(typical.makespan, simulate(ScheduleKind::one_f_one_b, c.pp, c.m, 1, 1, 2).makespan);
      EXPECT_GE(eq.bubble(), formula - 1e-9);
      EXPECT_LE(eq.bubble(), flat + 0.05);
      EXPECT_GE(any.bubble(), formula - 1e-9);
      if (c.m == c.pp) {
        EXPECT_NEAR(eq.bubble(), formula, 1e-9);
      }
    }
  }
}

TEST(Schedule, BubbleFormula) {
  EXPECT_DOUBLE_EQ(bubble_fraction(ScheduleKind::gpipe, 4, 8), 3.0 / 11.0);
  EXPECT_DOUBLE_EQ(bubble_fraction(ScheduleKind::one_f_one_b, 4, 8), 3.0 / 11.0);
  EXPECT_DOUBLE_EQ(bubble_fraction(ScheduleKind::interleaved, 4, 8, 2), 3.0 / 19.0);
  EXPECT_DOUBLE_EQ(bubble_fraction(ScheduleKind::one_f_one_b, 1, 5), 0.0);
}

// pp = 1 has no communication and no bubble, for every kind.
TEST(Schedule, SingleStage) {
  for (auto kind : {ScheduleKind::gpipe, ScheduleKind::one_f_one_b, ScheduleKind::interleaved}) {
    const int chunks = kind == ScheduleKind::interleaved ? 3 : 1;
    const auto list = build_schedule(kind, 1, 0, 5, chunks);
    EXPECT_EQ(list.size(), 2u * 5 * chunks);
    for (const Action& a : list) EXPECT_FALSE(is_comm(a.type));
    EXPECT_NEAR(simulate(kind, 1, 5, chunks).bubble(), 0.0, 1e-12);
  }
}

}  // namespace
}  // namespace kumiko::parallel
