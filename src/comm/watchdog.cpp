// The communication watchdog: a fixed table of in-flight operations and one
// background thread that ends the job when one of them is older than the timeout
// (include/kumiko/comm/watchdog.h).
#include "kumiko/comm/watchdog.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <mutex>
#include <thread>
#include <vector>

#include "kumiko/core/log.h"

namespace kumiko::comm {
namespace {

constexpr int kSlots = 256;  // operations in flight at once (buckets, p2p) per process

// start_ns: 0 = free, -1 = being claimed, > 0 = in flight since (steady clock).
// The other fields are written before start_ns is published (release) and read by
// the watchdog after it (acquire), re-checking start_ns afterwards.
struct alignas(64) Slot {
  std::atomic<int64_t> start_ns{0};
  std::atomic<const char*> op{nullptr};
  std::atomic<const WatchGroup*> group{nullptr};
  std::atomic<int> peer{-1};
};

struct Handler {
  int id;
  std::function<void()> on_abort;
  std::function<std::string()> poll;
};

struct State {
  Slot slots[kSlots];
  std::atomic<int64_t> step{-1};
  std::atomic<int> rank{0};
  std::atomic<int64_t> timeout_ns{0};
  std::atomic<bool> full_warned{false};
  std::atomic<bool> fired{false};
  std::atomic<int> paused{0};  // > 0 while a WatchdogPause is alive (checkpoint saves)

  std::mutex mutex;  // thread, stop flag, handlers, groups
  std::condition_variable wake;
  std::thread thread;
  bool stopping = false;
  std::vector<Handler> handlers;
  int next_handler = 0;
  std::deque<WatchGroup> groups;  // interned; deque keeps addresses stable
};

// Never destroyed: the thread and late operations may outlive static destructors.
State& state() {
  static State* s = new State();
  return *s;
}

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

[[noreturn]] void fire(const std::string& message) {
  State& s = state();
  if (s.fired.exchange(true)) {  // another path is already ending the process
    for (;;) std::this_thread::sleep_for(std::chrono::seconds(1));
  }
  try {
    auto log = log::get("comm");
    log->error("{}", message);
    spdlog::apply_all([](const std::shared_ptr<spdlog::logger>& l) { l->flush(); });
  } catch (...) {
    std::fprintf(stderr, "%s\n", message.c_str());
  }
  std::fflush(stdout);
  std::fflush(stderr);
  // MPI_Abort may itself hang when the network is cut: exit regardless.
  std::thread([] {
    std::this_thread::sleep_for(std::chrono::seconds(2));
    _exit(kWatchdogExitCode);
  }).detach();
  std::vector<std::function<void()>> aborts;
  {
    std::lock_guard<std::mutex> lock(s.mutex);
    for (auto it = s.handlers.rbegin(); it != s.handlers.rend(); ++it)
      if (it->on_abort) aborts.push_back(it->on_abort);
  }
  for (auto& a : aborts) {
    try {
      a();
    } catch (...) {
    }
  }
  _exit(kWatchdogExitCode);
}

std::string describe(const Slot& slot, int64_t start, int64_t now, bool* still) {
  const char* op = slot.op.load(std::memory_order_relaxed);
  const WatchGroup* group = slot.group.load(std::memory_order_relaxed);
  const int peer = slot.peer.load(std::memory_order_relaxed);
  *still = slot.start_ns.load(std::memory_order_acquire) == start;
  if (!*still) return {};
  State& s = state();
  std::string text = fmt::format("rank {}: ", s.rank.load());
  if (const int64_t step = s.step.load(); step >= 0) text += fmt::format("step {}: ", step);
  text += op ? op : "operation";
  if (peer >= 0) {
    const bool recv = op && std::string(op).rfind("recv", 0) == 0;
    text += fmt::format(" {} world rank {}", recv ? "from" : "to", peer);
  }
  if (group) {
    text += fmt::format(" on group '{}'", group->name);
    if (!group->ranks.empty()) text += fmt::format(" (world ranks {})", group->ranks);
  }
  text += fmt::format(" has not completed after {:.1f} s (parallel.comm_timeout_s = {:g}); ending the job "
                      "(exit {})",
                      static_cast<double>(now - start) * 1e-9, Watchdog::timeout_s(), kWatchdogExitCode);
  return text;
}

void run() {
  State& s = state();
  std::unique_lock<std::mutex> lock(s.mutex);
  while (!s.stopping) {
    const int64_t timeout = s.timeout_ns.load();
    const auto period = std::chrono::nanoseconds(std::clamp<int64_t>(timeout / 10, 20'000'000, 250'000'000));
    s.wake.wait_for(lock, period);
    if (s.stopping) break;
    std::string message;
    for (const auto& h : s.handlers) {
      if (!h.poll) continue;
      try {
        message = h.poll();
      } catch (const std::exception& e) {
        message = e.what();
      }
      if (!message.empty()) break;
    }
    if (message.empty()) {
      // While paused (rank 0 writing a checkpoint) operations get 10 times longer.
      const int64_t limit = s.paused.load() > 0 ? 10 * timeout : timeout;
      const int64_t now = now_ns();
      for (const Slot& slot : s.slots) {
        const int64_t start = slot.start_ns.load(std::memory_order_acquire);
        if (start <= 0 || now - start <= limit) continue;
        bool still = false;
        message = describe(slot, start, now, &still);
        if (still) break;
      }
    }
    if (!message.empty()) {
      lock.unlock();
      fire(message);
    }
  }
}

}  // namespace

void Watchdog::pause() { state().paused.fetch_add(1); }
void Watchdog::resume() { state().paused.fetch_sub(1); }

void Watchdog::start(double timeout_s) {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  s.timeout_ns.store(static_cast<int64_t>(timeout_s * 1e9));
  if (s.thread.joinable()) {
    s.wake.notify_all();
    return;
  }
  s.stopping = false;
  s.thread = std::thread(run);
}

void Watchdog::stop() {
  State& s = state();
  std::thread t;
  {
    std::lock_guard<std::mutex> lock(s.mutex);
    s.stopping = true;
    s.wake.notify_all();
    t = std::move(s.thread);
  }
  if (t.joinable() && t.get_id() != std::this_thread::get_id()) t.join();
}

bool Watchdog::running() {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  return s.thread.joinable();
}

double Watchdog::timeout_s() { return static_cast<double>(state().timeout_ns.load()) * 1e-9; }
void Watchdog::set_step(int64_t step) { state().step.store(step, std::memory_order_relaxed); }
void Watchdog::set_rank(int world_rank) { state().rank.store(world_rank, std::memory_order_relaxed); }

const WatchGroup* Watchdog::group(const std::string& name, const std::string& world_ranks) {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  for (const auto& g : s.groups)
    if (g.name == name && g.ranks == world_ranks) return &g;
  s.groups.push_back({name, world_ranks});
  return &s.groups.back();
}

int Watchdog::begin(const char* op, const WatchGroup* group, int peer_world_rank) noexcept {
  State& s = state();
  for (int i = 0; i < kSlots; ++i) {
    Slot& slot = s.slots[i];
    int64_t expected = 0;
    if (slot.start_ns.load(std::memory_order_relaxed) != 0 ||
        !slot.start_ns.compare_exchange_strong(expected, -1, std::memory_order_acquire))
      continue;
    slot.op.store(op, std::memory_order_relaxed);
    slot.group.store(group, std::memory_order_relaxed);
    slot.peer.store(peer_world_rank, std::memory_order_relaxed);
    slot.start_ns.store(now_ns(), std::memory_order_release);
    return i;
  }
  if (!s.full_warned.exchange(true)) {
    try {
      log::get("comm")->warn("more than {} communication operations in flight: the watchdog does not "
                             "watch the excess ones",
                             kSlots);
    } catch (...) {
    }
  }
  return -1;
}

void Watchdog::end(int slot) noexcept {
  if (slot >= 0) state().slots[slot].start_ns.store(0, std::memory_order_release);
}

int Watchdog::add_handler(std::function<void()> on_abort, std::function<std::string()> poll) {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  const int id = s.next_handler++;
  s.handlers.push_back({id, std::move(on_abort), std::move(poll)});
  return id;
}

void Watchdog::remove_handler(int id) {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  std::erase_if(s.handlers, [id](const Handler& h) { return h.id == id; });
}

int Watchdog::in_flight() {
  int n = 0;
  for (const Slot& slot : state().slots) n += slot.start_ns.load(std::memory_order_relaxed) > 0;
  return n;
}

}  // namespace kumiko::comm
