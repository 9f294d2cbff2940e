#include "kumiko/parallel/schedule.h"

#include <algorithm>
#include <map>
#include <set>
#include <utility>

#include "kumiko/core/error.h"

namespace kumiko::parallel {

namespace {

constexpr const char* kMicroBatchesKey =
    "pipeline micro-batches per step (train.global_batch / (train.micro_batch x parallel.dp))";

// The interleaved lists are placed on a timeline where a backward takes this many
// forwards (the usual ratio); they are optimal (bubble = formula) at that ratio.
constexpr double kReferenceBackward = 2.0;

Action compute(ActionType type, int mb, int chunk) { return Action{type, mb, chunk, -1}; }

// gpipe and 1f1b (chunks = 1, global stage = rank). See the header for the order.
std::vector<Action> build_flat(ScheduleKind kind, int pp, int r, int m) {
  std::vector<Action> out;
  const bool first = r == 0, last = r == pp - 1;
  auto recv_act = [&](int mb) {
    if (!first) out.push_back({ActionType::recv_activation, mb, 0, r - 1});
  };
  auto send_act = [&](int mb) {
    if (!last) out.push_back({ActionType::send_activation, mb, 0, r + 1});
  };
  auto recv_grad = [&](int mb) {
    if (!last) out.push_back({ActionType::recv_gradient, mb, 0, r + 1});
  };
  auto send_grad = [&](int mb) {
    if (!first) out.push_back({ActionType::send_gradient, mb, 0, r - 1});
  };
  auto fwd = [&](int mb) { out.push_back(compute(ActionType::forward, mb, 0)); };
  auto bwd = [&](int mb) { out.push_back(compute(ActionType::backward, mb, 0)); };

  const int warmup = kind == ScheduleKind::gpipe ? m : std::min(pp - r - 1, m);
  const int steady = m - warmup;
  for (int i = 0; i < warmup; ++i) {
    recv_act(i);
    fwd(i);
    send_act(i);
  }
  for (int i = 0; i < steady; ++i) {
    const int k = warmup + i;  // forward of k, then backward of i
    recv_act(k);
    fwd(k);
    recv_grad(i);  // the gradient crosses the link before the activation (see header)
    send_act(k);
    bwd(i);
    send_grad(i);
  }
  for (int i = steady; i < m; ++i) {
    recv_grad(i);
    bwd(i);
    send_grad(i);
  }
  return out;
}

struct Compute {
  bool forward;
  int mb;
  int chunk;
};

// Megatron's interleaved compute order for rank r.
std::vector<Compute> interleaved_order(int pp, int r, int m, int v) {
  const int total = m * v;
  auto chunk_of = [&](int k, bool forward) {
    const int c = (k % (pp * v)) / pp;
    return forward ? c : v - 1 - c;
  };
  auto mb_of = [&](int k) { return (k / (pp * v)) * pp + k % pp; };
  const int warmup = std::min(2 * (pp - r - 1) + (v - 1) * pp, total);
  std::vector<Compute> order;
  order.reserve(2 * total);
  for (int k = 0; k < warmup; ++k) order.push_back({true, mb_of(k), chunk_of(k, true)});
  for (int i = 0; i < total - warmup; ++i) {
    const int k = warmup + i;
    order.push_back({true, mb_of(k), chunk_of(k, true)});
    order.push_back({false, mb_of(i), chunk_of(i, false)});
  }
  for (int i = std::max(total - warmup, 0); i < total; ++i)
    order.push_back({false, mb_of(i), chunk_of(i, false)});
  return order;
}

// Places the transfers of the interleaved compute orders on a reference timeline
// (forward 1, backward 2): a transfer happens as soon as its data exists and both ranks
// are between computes. Every rank's list is the projection of that one global event
// sequence, so the lists cannot deadlock with rendezvous sends.
std::vector<std::vector<Action>> build_interleaved(int pp, int m, int v) {
  const int stages = pp * v;
  std::vector<std::vector<Compute>> order(pp);
  for (int r = 0; r < pp; ++r) order[r] = interleaved_order(pp, r, m, v);
  std::vector<std::vector<Action>> lists(pp);

  // available_act[s][mb]: stage s has the input activation of mb; available_grad likewise.
  std::vector<std::vector<char>> act(stages, std::vector<char>(m, 0));
  std::vector<std::vector<char>> grad(stages, std::vector<char>(m, 0));
  struct Transfer {
    bool activation;
    int mb;
    int from_stage, to_stage;
  };
  std::vector<Transfer> pending;
  std::vector<size_t> next(pp, 0);
  std::vector<double> busy_until(pp, 0);
  std::vector<char> busy(pp, 0);
  std::vector<Compute> running(pp);

  double t = 0;
  for (;;) {
    // 1. Computes finishing now produce data.
    for (int r = 0; r < pp; ++r) {
      if (!busy[r] || busy_until[r] > t) continue;
      busy[r] = 0;
      const Compute c = running[r];
      const int s = c.chunk * pp + r;
      if (c.forward && s + 1 < stages) {
        if ((s + 1) % pp == r)
          act[s + 1][c.mb] = 1;  // pp == 1: same rank
        else
          pending.push_back({true, c.mb, s, s + 1});
      } else if (!c.forward && s > 0) {
        if ((s - 1) % pp == r)
          grad[s - 1][c.mb] = 1;
        else
          pending.push_back({false, c.mb, s, s - 1});
      }
    }
    // 2. Transfers whose two ranks are both between computes.
    for (auto it = pending.begin(); it != pending.end();) {
      const int a = it->from_stage % pp, b = it->to_stage % pp;
      if (busy[a] || busy[b]) {
        ++it;
        continue;
      }
      const ActionType send =
          it->activation ? ActionType::send_activation : ActionType::send_gradient;
      const ActionType recv =
          it->activation ? ActionType::recv_activation : ActionType::recv_gradient;
      lists[a].push_back({send, it->mb, it->from_stage / pp, it->to_stage});
      lists[b].push_back({recv, it->mb, it->to_stage / pp, it->from_stage});
      (it->activation ? act : grad)[it->to_stage][it->mb] = 1;
      it = pending.erase(it);
    }
    // 3. Ranks between computes start their next compute if its input is here.
    bool any_busy = false, all_done = true;
    for (int r = 0; r < pp; ++r) {
      if (!busy[r] && next[r] < order[r].size()) {
        const Compute c = order[r][next[r]];
        const int s = c.chunk * pp + r;
        const bool ready =
            c.forward ? (s == 0 || act[s][c.mb]) : (s == stages - 1 || grad[s][c.mb]);
        if (ready) {
          lists[r].push_back(
              compute(c.forward ? ActionType::forward : ActionType::backward, c.mb, c.chunk));
          running[r] = c;
          busy[r] = 1;
          busy_until[r] = t + (c.forward ? 1.0 : kReferenceBackward);
          ++next[r];
        }
      }
      any_busy = any_busy || busy[r];
      all_done = all_done && next[r] == order[r].size();
    }
    if (!any_busy) {
      KUMIKO_CHECK(all_done && pending.empty(), "interleaved compute order is infeasible (pp=", pp,
                   ", m=", m, ", chunks=", v, ")");
      break;
    }
    t = 1e300;
    for (int r = 0; r < pp; ++r)
      if (busy[r]) t = std::min(t, busy_until[r]);
  }
  return lists;
}

}  // namespace

ScheduleKind parse_schedule(const std::string& name) {
  if (name == "gpipe") return ScheduleKind::gpipe;
  if (name == "1f1b") return ScheduleKind::one_f_one_b;
  if (name == "interleaved") return ScheduleKind::interleaved;
  throw UserError(
      detail::concat("parallel.pp_schedule must be gpipe, 1f1b or interleaved, got '", name, "'"));
}

std::string to_string(ScheduleKind kind) {
  switch (kind) {
    case ScheduleKind::gpipe:
      return "gpipe";
    case ScheduleKind::one_f_one_b:
      return "1f1b";
    case ScheduleKind::interleaved:
      return "interleaved";
  }
  return "?";
}

std::string to_string(ActionType type) {
  switch (type) {
    case ActionType::forward:
      return "forward";
    case ActionType::backward:
      return "backward";
    case ActionType::send_activation:
      return "send_activation";
    case ActionType::recv_activation:
      return "recv_activation";
    case ActionType::send_gradient:
      return "send_gradient";
    case ActionType::recv_gradient:
      return "recv_gradient";
  }
  return "?";
}

std::string to_string(const Action& a) {
  return detail::concat(to_string(a.type), "(mb=", a.micro_batch, ", chunk=", a.virtual_stage,
                        ", peer=", a.peer_stage, ")");
}

void validate_schedule(ScheduleKind kind, int pp, int micro_batches, int chunks) {
  KUMIKO_USER_CHECK(pp >= 1, "parallel.pp must be >= 1, got ", pp);
  KUMIKO_USER_CHECK(micro_batches >= 1, kMicroBatchesKey, " must be >= 1, got ", micro_batches);
  if (kind == ScheduleKind::interleaved) {
    KUMIKO_USER_CHECK(chunks >= 2,
                      "parallel.pp_chunks must be >= 2 for parallel.pp_schedule = "
                      "interleaved, got ",
                      chunks);
    KUMIKO_USER_CHECK(micro_batches % pp == 0, "parallel.pp_schedule = interleaved needs the ",
                      kMicroBatchesKey, " to be a multiple of parallel.pp = ", pp, ", got ",
                      micro_batches);
  } else {
    KUMIKO_USER_CHECK(chunks == 1,
                      "parallel.pp_chunks must be 1 for parallel.pp_schedule = ", to_string(kind),
                      " (only interleaved uses chunks), got ", chunks);
  }
}

std::vector<std::vector<Action>> build_all_schedules(ScheduleKind kind, int pp, int micro_batches,
                                                     int chunks) {
  validate_schedule(kind, pp, micro_batches, chunks);
  if (kind == ScheduleKind::interleaved) return build_interleaved(pp, micro_batches, chunks);
  std::vector<std::vector<Action>> lists(pp);
  for (int r = 0; r < pp; ++r) lists[r] = build_flat(kind, pp, r, micro_batches);
  return lists;
}

std::vector<Action> build_schedule(ScheduleKind kind, int pp, int rank, int micro_batches,
                                   int chunks) {
  validate_schedule(kind, pp, micro_batches, chunks);
  KUMIKO_CHECK(rank >= 0 && rank < pp, "pipeline rank ", rank, " outside [0, ", pp, ")");
  if (kind == ScheduleKind::interleaved)
    return std::move(build_interleaved(pp, micro_batches, chunks)[rank]);
  return build_flat(kind, pp, rank, micro_batches);
}

int max_in_flight(const std::vector<Action>& actions) {
  std::set<std::pair<int, int>> live;  // (micro_batch, chunk) forwarded, not yet backwarded
  int best = 0;
  for (const Action& a : actions) {
    if (a.type == ActionType::forward) {
      live.insert({a.micro_batch, a.virtual_stage});
      best = std::max(best, static_cast<int>(live.size()));
    } else if (a.type == ActionType::backward) {
      live.erase({a.micro_batch, a.virtual_stage});
    }
  }
  return best;
}

double bubble_fraction(ScheduleKind kind, int pp, int micro_batches, int chunks) {
  validate_schedule(kind, pp, micro_batches, chunks);
  const double p = pp, m = micro_batches, v = chunks;
  return (p - 1) / (v * m + p - 1);  // v = 1 for gpipe and 1f1b
}

double SimResult::bubble() const {
  if (makespan <= 0 || idle.empty()) return 0;
  double sum = 0;
  for (double x : idle) sum += x;
  return sum / static_cast<double>(idle.size()) / makespan;
}

SimResult simulate_lists(const std::vector<std::vector<Action>>& lists, int chunks, double fwd_time,
                         double bwd_time) {
  const int pp = static_cast<int>(lists.size());
  KUMIKO_CHECK(pp >= 1 && chunks >= 1, "simulate: pp=", pp, " chunks=", chunks);
  const int stages = pp * chunks;
  const double tf = fwd_time / chunks, tb = bwd_time / chunks;
  std::vector<size_t> pc(pp, 0);
  std::vector<double> clock(pp, 0), work(pp, 0);

  // The action the peer must be at for `a` (on rank r) to complete.
  auto counterpart = [&](int r, const Action& a) {
    const int stage = a.virtual_stage * pp + r;
    KUMIKO_CHECK(a.peer_stage >= 0 && a.peer_stage < stages, "rank ", r, ": ", to_string(a),
                 " has no valid peer stage");
    const bool to_next =
        a.type == ActionType::send_activation || a.type == ActionType::recv_gradient;
    KUMIKO_CHECK(a.peer_stage == stage + (to_next ? 1 : -1), "rank ", r, ": ", to_string(a),
                 " talks to a non-adjacent stage (own stage ", stage, ")");
    ActionType other = ActionType::forward;
    switch (a.type) {
      case ActionType::send_activation:
        other = ActionType::recv_activation;
        break;
      case ActionType::recv_activation:
        other = ActionType::send_activation;
        break;
      case ActionType::send_gradient:
        other = ActionType::recv_gradient;
        break;
      case ActionType::recv_gradient:
        other = ActionType::send_gradient;
        break;
      default:
        break;
    }
    return Action{other, a.micro_batch, a.peer_stage / pp, stage};
  };

  for (bool progress = true; progress;) {
    progress = false;
    for (int r = 0; r < pp; ++r) {
      while (pc[r] < lists[r].size()) {
        const Action& a = lists[r][pc[r]];
        if (a.type == ActionType::forward || a.type == ActionType::backward) {
          const double d = a.type == ActionType::forward ? tf : tb;
          clock[r] += d;
          work[r] += d;
          ++pc[r];
          progress = true;
          continue;
        }
        const Action want = counterpart(r, a);
        const int q = a.peer_stage % pp;
        KUMIKO_CHECK(q != r, "rank ", r, ": ", to_string(a), " sends to itself");
        if (pc[q] >= lists[q].size() || !(lists[q][pc[q]] == want)) break;  // peer not there yet
        const double at = std::max(clock[r], clock[q]);
        clock[r] = clock[q] = at;
        ++pc[r];
        ++pc[q];
        progress = true;
      }
    }
  }
  std::string stuck;
  for (int r = 0; r < pp; ++r)
    if (pc[r] < lists[r].size())
      stuck += detail::concat(" rank ", r, " at #", pc[r], " ", to_string(lists[r][pc[r]]), ";");
  if (!stuck.empty()) throw Error("pipeline schedule deadlocks:" + stuck);

  SimResult res;
  res.makespan = *std::max_element(clock.begin(), clock.end());
  for (int r = 0; r < pp; ++r) res.idle.push_back(res.makespan - work[r]);
  return res;
}

SimResult simulate(ScheduleKind kind, int pp, int micro_batches, int chunks, double fwd_time,
                   double bwd_time) {
  return simulate_lists(build_all_schedules(kind, pp, micro_batches, chunks), chunks, fwd_time,
                        bwd_time);
}

}  // namespace kumiko::parallel
