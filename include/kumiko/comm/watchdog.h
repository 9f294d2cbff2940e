#pragma once
// The communication watchdog (docs/operations.md, "When a job dies"). Every
// collective and point-to-point operation of the MPI and NCCL communicators is
// registered while it is in flight (blocking ones for their duration, non-blocking
// ones from start until wait()/test() completes). A background thread, started once
// by Watchdog::start(), wakes a few times per second; when an operation is older than
// the timeout it logs one error through the "comm" logger, e.g.
//   rank 3: step 12: all_reduce on group 'dp' (world ranks 0,1,2,3) has not completed
//   after 30.0 s; ending the job (exit 77)
// then runs the abort handlers (ncclCommAbort for NCCL comms, MPI_Abort for the
// world), with a fallback that _exit(77)s two seconds later in case MPI_Abort hangs
// because the network is gone. Registered pollers (NCCL's async error) are checked
// on every wake-up as well.
//
// The hot path is a clock read, one compare-and-swap on a fixed slot and a few
// relaxed stores; nothing is allocated per operation.
#include <cstdint>
#include <functional>
#include <string>

namespace kumiko::comm {

inline constexpr int kWatchdogExitCode = 77;  // = train::kExitCommTimeout

// A communicator's description for messages: interned once, never freed.
struct WatchGroup {
  std::string name;   // "world", "dp", ...
  std::string ranks;  // world ranks of the members, "0,1,2,3"
};

class Watchdog {
 public:
  // Starts the background thread (once; later calls only change the timeout).
  // The trainer starts it when parallel.comm_timeout_s > 0 (0 turns it off).
  static void start(double timeout_s);
  // While paused (nested), operations get 10 times the timeout: rank 0 writing a
  // checkpoint may keep the others waiting at a barrier longer than the timeout.
  static void pause();
  static void resume();
  // Stops and joins the thread (finalize_world; tests).
  static void stop();
  static bool running();
  static double timeout_s();

  // The current training step, for messages (the trainer sets it each step).
  static void set_step(int64_t step);
  // This process's world rank, for messages (comm::world() sets it).
  static void set_rank(int world_rank);

  // The group description for `name` over these world ranks; the same pointer for
  // the same (name, ranks), valid until the process ends.
  static const WatchGroup* group(const std::string& name, const std::string& world_ranks);

  // Registers an operation (`op` must be a string literal); peer_world_rank >= 0 for
  // send/recv. Returns a slot for end(), or -1 when every slot is taken (then the
  // operation is not watched; a warning is logged once).
  static int begin(const char* op, const WatchGroup* group, int peer_world_rank = -1) noexcept;
  static void end(int slot) noexcept;

  // Abort handlers run in registration order when the watchdog fires (before the
  // final _exit). poll, when set, is called on every wake-up: returning a non-empty
  // message fires the watchdog with that message. Returns an id for remove().
  static int add_handler(std::function<void()> on_abort, std::function<std::string()> poll = {});
  static void remove_handler(int id);

  // Test hook: the number of operations in flight now.
  static int in_flight();
};

// Pauses the watchdog for the lifetime of the scope.
class WatchdogPause {
 public:
  WatchdogPause() { Watchdog::pause(); }
  ~WatchdogPause() { Watchdog::resume(); }
  WatchdogPause(const WatchdogPause&) = delete;
  WatchdogPause& operator=(const WatchdogPause&) = delete;
};

// Registers an operation for the lifetime of the scope (blocking operations).
class WatchScope {
 public:
  WatchScope(const char* op, const WatchGroup* group, int peer_world_rank = -1) noexcept
      : slot_(Watchdog::begin(op, group, peer_world_rank)) {}
  ~WatchScope() { Watchdog::end(slot_); }
  WatchScope(const WatchScope&) = delete;
  WatchScope& operator=(const WatchScope&) = delete;

 private:
  int slot_;
};

}  // namespace kumiko::comm
