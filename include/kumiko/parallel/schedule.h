#pragma once
// Pipeline-parallel schedules: what each pipeline rank does, in order, during one
// optimizer step. A pure module (no model, no communicator): the trainer walks the
// list of its rank and runs each action; tests check the lists and simulate them.
//
// Stages. The model's layers are cut into pp * chunks consecutive pieces ("global"
// or virtual stages). Chunk c of rank r is global stage s = c * pp + r (Megatron's
// interleaving: rank r holds pieces r, r + pp, r + 2 pp, ...); with chunks = 1 the
// global stage is the rank. Stage 0 reads the data (no recv of activations); the
// last stage pp * chunks - 1 computes the loss (no send of activations, and its
// backward starts from the loss, so no recv of gradients).
//
// Communication semantics (the contract with the trainer): every send/recv is
// BLOCKING and may be a rendezvous (a send completes only when the peer reaches
// the matching recv, as MPI_Ssend / NCCL send of large buffers). The lists of all
// ranks together are deadlock-free under that rule, executed strictly in order;
// they are therefore also deadlock-free with buffered (eager) sends. Messages are
// identified by (type, micro_batch, sender's global stage); the trainer can use
// them as the MPI tag. `simulate` checks this for every list it runs.
#include <string>
#include <vector>

namespace kumiko::parallel {

enum class ScheduleKind { gpipe, one_f_one_b, interleaved };

// "gpipe" | "1f1b" | "interleaved"; anything else is a UserError naming parallel.pp_schedule.
ScheduleKind parse_schedule(const std::string& name);
std::string to_string(ScheduleKind kind);

enum class ActionType {
  forward,
  backward,
  send_activation,  // to global stage peer_stage (= own stage + 1)
  recv_activation,  // from global stage peer_stage (= own stage - 1), before its forward
  send_gradient,    // to global stage peer_stage (= own stage - 1)
  recv_gradient,    // from global stage peer_stage (= own stage + 1), before its backward
};
std::string to_string(ActionType type);

struct Action {
  ActionType type;
  int micro_batch;
  int virtual_stage;  // chunk index on this rank (0 unless interleaved)
  int peer_stage;     // global stage sent to / received from; -1 for forward/backward

  bool operator==(const Action&) const = default;
};
std::string to_string(const Action& a);  // e.g. "send_activation(mb=3, chunk=1, peer=5)"

// The ordered actions of pipeline rank `rank` (0 <= rank < pp) for one step of
// `micro_batches` micro-batches with `chunks` model chunks per rank.
//
// gpipe:  all forwards (micro-batch 0, 1, ...), then all backwards in the same order.
// 1f1b:   PipeDream-Flush / Megatron's non-interleaved schedule: rank r runs
//         min(pp - r - 1, m) warm-up forwards, then alternates one forward and one
//         backward, then drains the remaining backwards. At most pp - r micro-batches
//         are in flight on rank r. micro_batches < pp is allowed: ranks whose warm-up
//         covers every micro-batch then run all forwards before all backwards
//         (gpipe-like, same bubble formula).
//         In the steady state an activation send (rank r -> r+1) and a gradient send
//         (r+1 -> r) cross on the same link; the gradient goes first (rank r posts
//         recv_gradient just before send_activation), which keeps every link's order
//         identical on both sides. Otherwise a send follows right after the compute
//         that produces it and a recv comes right before the compute that needs it.
// interleaved: Megatron's interleaved 1F1B (Narayanan et al. 2021, sec. 2.2) over
//         chunks >= 2 chunks per rank: forwards go in groups of pp micro-batches per
//         chunk (chunk 0 for micro-batches 0..pp-1, chunk 1 for the same, ..., then the
//         next group), backwards in the mirrored chunk order; rank r runs
//         min(2 (pp - r - 1) + (chunks - 1) pp, m * chunks) warm-up forwards. Requires
//         micro_batches % pp == 0. Because the last rank feeds rank 0 (stage pp-1 ->
//         stage pp), the links form a ring; the sends/recvs are placed by replaying the
//         compute order on a reference timeline (forward 1, backward 2 time units per
//         micro-batch and rank): each transfer happens at the first moment at which both
//         its producer has finished and both ranks are between computes, and every list
//         is the projection of that one global sequence of events (hence deadlock-free).
//         A recv may therefore come a few computes before the forward that needs it.
//
// Input errors are UserErrors naming the config keys: parallel.pp >= 1,
// micro-batches >= 1, parallel.pp_chunks == 1 for gpipe/1f1b, >= 2 for interleaved,
// and for interleaved micro_batches % pp == 0. `rank` outside [0, pp) is a bug (Error).
std::vector<Action> build_schedule(ScheduleKind kind, int pp, int rank, int micro_batches,
                                   int chunks = 1);
// All ranks' lists, index = pipeline rank.
std::vector<std::vector<Action>> build_all_schedules(ScheduleKind kind, int pp, int micro_batches,
                                                     int chunks = 1);
// Throws the UserErrors described above; build_schedule calls it.
void validate_schedule(ScheduleKind kind, int pp, int micro_batches, int chunks);

// Largest number of activation sets held at once: forwards (micro_batch, chunk)
// whose backward has not run yet. With chunks = 1 that is micro-batches in flight.
int max_in_flight(const std::vector<Action>& actions);

// The ideal pipeline bubble as a fraction of the step's total time (Narayanan et al.
// 2021, assuming every stage takes the same time): with p = pp, m = micro_batches,
// v = chunks the idle time per rank is (p - 1) (t_f + t_b) for gpipe and 1f1b and
// (p - 1) (t_f + t_b) / v for interleaved, against an ideal m (t_f + t_b), so
//   gpipe, 1f1b:  (p - 1) / (m + p - 1)
//   interleaved:  (p - 1) / (v m + p - 1)
// (the paper's "bubble time fraction" (p - 1) / m is idle relative to ideal time; this
// is idle relative to total time). Validates its inputs like build_schedule.
double bubble_fraction(ScheduleKind kind, int pp, int micro_batches, int chunks = 1);

// Runs all ranks' lists together: compute is serial per rank, a forward of one
// micro-batch on one chunk takes fwd_time / chunks and a backward bwd_time / chunks
// (so a rank's total work does not depend on chunks); sends/recvs take no time but
// are rendezvous: both sides leave at max(arrival times). Throws kumiko::Error if the
// lists deadlock, or if a send/recv has no matching peer action.
struct SimResult {
  double makespan = 0;       // time until the last rank finishes
  std::vector<double> idle;  // per rank: makespan - its compute time
  double bubble() const;     // mean idle / makespan (0 when makespan is 0)
};
SimResult simulate(ScheduleKind kind, int pp, int micro_batches, int chunks = 1,
                   double fwd_time = 1, double bwd_time = 2);
// The same for arbitrary lists (index = pipeline rank); used by tests.
SimResult simulate_lists(const std::vector<std::vector<Action>>& lists, int chunks,
                         double fwd_time = 1, double bwd_time = 2);

}  // namespace kumiko::parallel
