// The checkpoint store against real processes of the kumiko binary: kill -9 in
// the middle of a save, SIGTERM/SIGUSR1 preemption, stop_at, and user errors.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include <gtest/gtest.h>

#include "kumiko_test_support.h"
#include "kumiko/ckpt/h5file.h"
#include "kumiko/ckpt/store.h"
#include "kumiko/train/trainer.h"

namespace kumiko::train {
namespace {

namespace fs = std::filesystem;
using testing::temp_run_dir;
using testing::tiny_config;

const std::string kBinary = std::string(KUMIKO_BINARY_DIR) + "/bin/kumiko";

// Starts `kumiko train --config <dir>/run.ini [extra...]` with output in <dir>/log.txt.
pid_t start(const config::Config& c, std::vector<std::string> extra = {}) {
  fs::create_directories(c.log.run_dir);
  const std::string ini = c.log.run_dir + "/run.ini";
  std::ofstream(ini) << config::to_ini(c);
  const pid_t pid = fork();
  if (pid == 0) {
    const std::string log = c.log.run_dir + "/log.txt";
    freopen(log.c_str(), "a", stderr);
    freopen(log.c_str(), "a", stdout);
    std::vector<std::string> args = {kBinary, "train", "--config", ini};
    args.insert(args.end(), extra.begin(), extra.end());
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    execv(kBinary.c_str(), argv.data());
    _exit(127);
  }
  return pid;
}

int wait_exit(pid_t pid) {
  int status = 0;
  waitpid(pid, &status, 0);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return WEXITSTATUS(status);
}

template <typename Pred>
bool wait_for(Pred pred, double seconds) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  while (std::chrono::steady_clock::now() < deadline) {
    if (pred()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return false;
}

bool has_partial(const std::string& dir) {
  if (!fs::exists(dir)) return false;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().filename().string().find("step_00000004.h5.tmp-") == 0) return true;
  return false;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// The children of `parent`, from each of its threads' `children` list (Linux >= 3.5;
// empty when the kernel keeps none). Not by listing /proc: under qemu-user (the aarch64
// tests) a directory that large lists as empty.
std::vector<pid_t> children_of(pid_t parent, bool* have_lists = nullptr) {
  std::vector<pid_t> pids;
  const fs::path tasks = fs::path("/proc") / std::to_string(parent) / "task";
  std::error_code ec;
  for (auto it = fs::directory_iterator(tasks, ec); !ec && it != fs::directory_iterator(); it.increment(ec)) {
    std::ifstream list(it->path() / "children");
    if (!list) continue;
    if (have_lists) *have_lists = true;
    for (pid_t pid = 0; list >> pid;) pids.push_back(pid);
  }
  return pids;
}

// Ends a started run that a failed assertion would otherwise leave training (the runs
// here ask for 1000 steps or more): SIGTERM (mpirun passes it to its ranks, which save
// and exit), then after 30 s SIGKILL to the process and to its children (mpirun's
// ranks, which a SIGKILL of mpirun alone would orphan). Nothing to do once the test has
// waited for the process itself.
class EndOnScopeExit {
 public:
  explicit EndOnScopeExit(pid_t pid) : pid_(pid) {}
  EndOnScopeExit(const EndOnScopeExit&) = delete;
  EndOnScopeExit& operator=(const EndOnScopeExit&) = delete;
  ~EndOnScopeExit() {
    if (pid_ <= 0) return;                              // fork failed: never kill(-1)
    if (waitpid(pid_, nullptr, WNOHANG) != 0) return;  // reaped already, or exited now
    kill(pid_, SIGTERM);
    if (!wait_for([&] { return waitpid(pid_, nullptr, WNOHANG) != 0; }, 30)) {
      for (const pid_t child : children_of(pid_)) kill(child, SIGKILL);
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
  }

 private:
  pid_t pid_;
};

TEST(CheckpointProcess, KillDuringSaveKeepsPreviousCheckpoint) {
  const auto dir = temp_run_dir("kill9");
  auto c = tiny_config("gpt2", dir);
  c.train.steps = 1000;
  c.checkpoint.every_steps = 2;
  c.checkpoint.write_delay_ms = 40;  // each save takes ~1 s
  const std::string ckdir = dir + "/checkpoints";
  const pid_t pid = start(c);
  const EndOnScopeExit end_pid(pid);
  // Wait until the second save (step 4) is half written, then kill -9.
  ASSERT_TRUE(wait_for([&] { return has_partial(ckdir); }, 120)) << read_file(dir + "/log.txt");
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  kill(pid, SIGKILL);
  EXPECT_EQ(wait_exit(pid), 128 + SIGKILL);
  ckpt::Store store(ckdir);
  ASSERT_TRUE(store.latest().has_value());
  EXPECT_EQ(ckpt::step_of(*store.latest()), 2);
  EXPECT_TRUE(ckpt::verify_file(*store.latest()).empty());
  EXPECT_TRUE(has_partial(ckdir));
  // A restart removes the partial file and continues from step 2.
  c.train.steps = 4;
  c.checkpoint.write_delay_ms = 0;
  c.checkpoint.resume = "auto";
  c.log.level = "info";
  const pid_t again = start(c);
  EXPECT_EQ(wait_exit(again), 0) << read_file(dir + "/log.txt");
  EXPECT_FALSE(has_partial(ckdir));
  EXPECT_EQ(ckpt::step_of(*store.latest()), 4);
  EXPECT_NE(read_file(dir + "/log.txt").find("resumed from"), std::string::npos);
}

#ifdef KUMIKO_MPIEXEC
// Starts `mpirun -np <np> kumiko train --config <dir>/run.ini`, output in <dir>/log.txt.
pid_t start_mpi(const config::Config& c, int np) {
  fs::create_directories(c.log.run_dir);
  const std::string ini = c.log.run_dir + "/run.ini";
  std::ofstream(ini) << config::to_ini(c);
  setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 1);
  setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 1);
  const pid_t pid = fork();
  if (pid == 0) {
    const std::string log = c.log.run_dir + "/log.txt";
    freopen(log.c_str(), "a", stderr);
    freopen(log.c_str(), "a", stdout);
    std::vector<std::string> args = {KUMIKO_MPIEXEC, "--oversubscribe", "-np", std::to_string(np), kBinary,
                                     "train", "--config", ini};
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    execv(KUMIKO_MPIEXEC, argv.data());
    _exit(127);
  }
  return pid;
}

// The processes whose parent is `parent` and whose command line names the kumiko binary:
// from children_of(), or, for a kernel that keeps no children lists, by a /proc scan.
std::vector<pid_t> kumiko_children(pid_t parent) {
  bool have_lists = false;
  std::vector<pid_t> pids = children_of(parent, &have_lists);
  if (!have_lists) {
    for (const auto& e : fs::directory_iterator("/proc")) {
      const std::string name = e.path().filename().string();
      if (name.find_first_not_of("0123456789") != std::string::npos) continue;
      std::ifstream stat(e.path() / "stat");
      std::string line;
      std::getline(stat, line);
      const auto close = line.rfind(')');
      if (close == std::string::npos) continue;
      std::istringstream rest(line.substr(close + 2));
      std::string state;
      pid_t ppid = 0;
      rest >> state >> ppid;
      if (ppid == parent) pids.push_back(static_cast<pid_t>(std::stoi(name)));
    }
  }
  std::vector<pid_t> out;
  for (const pid_t pid : pids)
    if (read_file("/proc/" + std::to_string(pid) + "/cmdline").find("kumiko") != std::string::npos) out.push_back(pid);
  return out;
}

// Every /model dataset of two weights files, byte for byte.
void expect_same_weights(const std::string& a, const std::string& b) {
  ckpt::H5Reader x(a), y(b);
  const auto names = y.list("/model");
  ASSERT_EQ(x.list("/model"), names);
  ASSERT_FALSE(names.empty());
  for (const auto& n : names) EXPECT_TRUE(x.read_raw("/model/" + n) == y.read_raw("/model/" + n)) << n;
}

// Two ranks (tp2) write every second step in parallel, in the background; one rank is
// killed with SIGKILL while step 4 is being written. The previous checkpoint (step 2) is
// `latest` and sound, and resuming from it ends bitwise where an uninterrupted run does.
TEST(CheckpointProcess, KillOneRankDuringBackgroundParallelSave) {
  if (!ckpt::H5Writer::parallel_available()) GTEST_SKIP() << "SKIP: this build has serial HDF5";
  const auto dir = temp_run_dir("kill9-parallel");
  auto c = tiny_config("gpt2", dir + "/killed");
  c.model.vocab_size = 96;  // divisible by tp
  c.parallel.tp = 2;
  c.backend.threads = 1;
  c.train.steps = 1000;
  c.checkpoint.every_steps = 2;
  c.checkpoint.writer = "parallel";
  c.checkpoint.async = true;
  c.checkpoint.write_delay_ms = 40;  // each save takes ~1 s
  const std::string ckdir = c.log.run_dir + "/checkpoints";
  const pid_t mpirun = start_mpi(c, 2);
  const EndOnScopeExit end_mpirun(mpirun);
  ASSERT_TRUE(wait_for([&] { return has_partial(ckdir); }, 120)) << read_file(c.log.run_dir + "/log.txt");
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  const auto ranks = kumiko_children(mpirun);
  ASSERT_EQ(ranks.size(), 2u) << "the ranks of mpirun " << mpirun;
  kill(ranks[1], SIGKILL);
  EXPECT_NE(wait_exit(mpirun), 0);
  ckpt::Store store(ckdir);
  ASSERT_TRUE(store.latest().has_value());
  EXPECT_EQ(ckpt::step_of(*store.latest()), 2);
  EXPECT_TRUE(ckpt::verify_file(*store.latest()).empty());

  c.train.steps = 6;
  c.checkpoint.write_delay_ms = 0;
  c.checkpoint.resume = "auto";
  c.log.level = "info";
  EXPECT_EQ(wait_exit(start_mpi(c, 2)), 0) << read_file(c.log.run_dir + "/log.txt");
  EXPECT_NE(read_file(c.log.run_dir + "/log.txt").find("resumed from"), std::string::npos);
  auto straight = c;
  straight.log.run_dir = dir + "/straight";
  straight.checkpoint.resume = "";
  EXPECT_EQ(wait_exit(start_mpi(straight, 2)), 0) << read_file(straight.log.run_dir + "/log.txt");
  expect_same_weights(c.log.run_dir + "/weights_final.h5", straight.log.run_dir + "/weights_final.h5");
}
#endif

void preempt_with(int sig) {
  const auto dir = temp_run_dir("sig" + std::to_string(sig));
  auto c = tiny_config("llama", dir);
  c.train.steps = 100000;
  const pid_t pid = start(c);
  const EndOnScopeExit end_pid(pid);
  // Let it train a few steps, then signal.
  ASSERT_TRUE(wait_for([&] { return read_file(dir + "/metrics.jsonl").find("\"step\":3,") != std::string::npos; }, 120));
  kill(pid, sig);
  EXPECT_EQ(wait_exit(pid), kExitPreempted) << read_file(dir + "/log.txt");
  ckpt::Store store(dir + "/checkpoints");
  ASSERT_TRUE(store.latest().has_value());
  const int64_t step = ckpt::step_of(*store.latest());
  EXPECT_GE(step, 3);
  EXPECT_TRUE(ckpt::verify_file(*store.latest()).empty());
  // A restart continues from that step.
  c.train.steps = step + 2;
  c.checkpoint.resume = "auto";
  EXPECT_EQ(wait_exit(start(c)), 0) << read_file(dir + "/log.txt");
  EXPECT_EQ(ckpt::step_of(*store.latest()), step + 2);
}

TEST(CheckpointProcess, SigtermSavesAndExitsWithPreemptedCode) { preempt_with(SIGTERM); }
TEST(CheckpointProcess, Sigusr1SavesAndExitsWithPreemptedCode) { preempt_with(SIGUSR1); }

TEST(CheckpointProcess, UserErrorsExitTwoWithOneLine) {
  const auto dir = temp_run_dir("usererr");
  auto c = tiny_config("gpt2", dir);
  c.checkpoint.resume = dir + "/does-not-exist.h5";
  EXPECT_EQ(wait_exit(start(c)), 2);
  const std::string log = read_file(dir + "/log.txt");
  EXPECT_NE(log.find("kumiko: error: checkpoint.resume: " + dir + "/does-not-exist.h5: no such checkpoint file"),
            std::string::npos)
      << log;
  EXPECT_EQ(std::count(log.begin(), log.end(), '\n'), 1) << log;

  // A checkpoint folder that cannot be created: one line naming it, at start.
  const auto dir2 = temp_run_dir("usererr-dir");
  auto d = tiny_config("gpt2", dir2);
  d.checkpoint.dir = "/proc/kumiko-no-such-folder/checkpoints";
  EXPECT_EQ(wait_exit(start(d)), 2);
  const std::string log2 = read_file(dir2 + "/log.txt");
  EXPECT_NE(log2.find("kumiko: error: /proc/kumiko-no-such-folder/checkpoints: cannot create the checkpoint folder"),
            std::string::npos)
      << log2;
  EXPECT_EQ(std::count(log2.begin(), log2.end(), '\n'), 1) << log2;
}

}  // namespace
}  // namespace kumiko::train
