#include "kumiko/train/trainer.h"

#include <omp.h>

#include <array>
#include <chrono>
#include <functional>
#include <csignal>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <sstream>
#include <limits>

#include "kumiko/ckpt/h5file.h"
#include "kumiko/ckpt/store.h"
#include "kumiko/config/load.h"
#include "kumiko/comm/communicator.h"
#include "kumiko/comm/nccl.h"
#include "kumiko/gpu/engine.h"
#include "kumiko/comm/watchdog.h"
#include "kumiko/parallel/engine.h"
#include "kumiko/parallel/grid.h"
#include "kumiko/parallel/pipeline.h"
#include "kumiko/parallel/schedule.h"
#include "kumiko/plan/plan.h"
#include "kumiko/core/error.h"
#include "kumiko/core/log.h"
#include "kumiko/core/progress.h"
#include "kumiko/core/rng.h"
#include "kumiko/data/loader.h"
#include "kumiko/model/sharding.h"
#include "kumiko/model/transformer.h"
#include "kumiko/train/checkpoint.h"
#include "kumiko/train/metrics.h"
#include "kumiko/train/optimizer.h"
#include "kumiko/data/tokenizer.h"
#include "kumiko/train/sampler.h"
#include "kumiko/train/schedule.h"
#include "kumiko/train/spike.h"
#include "kumiko/train/stragglers.h"
#include "kumiko/train/threads.h"
#include "kumiko/train/weights.h"

namespace kumiko::train {

namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

// Set by SIGTERM / SIGUSR1; the step loop checks it at each step boundary.
volatile std::sig_atomic_t g_stop_signal = 0;
extern "C" void on_stop_signal(int sig) { g_stop_signal = sig; }

class SignalGuard {
 public:
  SignalGuard() {
    g_stop_signal = 0;
    struct sigaction sa {};
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, &old_term_);
    sigaction(SIGUSR1, &sa, &old_usr1_);
  }
  ~SignalGuard() {
    sigaction(SIGTERM, &old_term_, nullptr);
    sigaction(SIGUSR1, &old_usr1_, nullptr);
  }

 private:
  struct sigaction old_term_ {}, old_usr1_ {};
};

// Random tokens for benchmarks ([data] synthetic): a pure function of (seed, step, index).
void synthetic_batch(uint64_t seed, int64_t step, int64_t first, int64_t count, int64_t T, int64_t V,
                     int32_t* inputs, int32_t* targets) {
  const uint64_t key = rng::stream_key(seed, "data.synthetic");
  for (int64_t s = 0; s < count; ++s)
    for (int64_t t = 0; t <= T; ++t) {
      const uint64_t counter = static_cast<uint64_t>((first + s) * (T + 1) + t);
      const auto block = rng::philox(key, static_cast<uint64_t>(step), counter);
      const int32_t tok = static_cast<int32_t>(block[0] % static_cast<uint32_t>(V));
      if (t < T) inputs[s * T + t] = tok;
      if (t > 0) targets[s * T + t - 1] = tok;
    }
}

// train.init_from: the whole model's logical tensors from a weights file (kumiko
// import-hf, or another run's weights_final.h5), split for this rank's layout.
void init_from_weights(const config::Config& cfg, const std::string& tokenizer_sha256,
                       const std::vector<model::ParameterSpec>& logical_specs,
                       const std::vector<model::ParameterSpec>& stage_specs, model::ParameterStore<float>& params) {
  const std::string& path = cfg.train.init_from;
  KUMIKO_USER_CHECK(std::filesystem::exists(path), "train.init_from: ", path, ": no such weights file");
  const WeightsInfo info = read_weights_info(path);
  // The stored [model] must be this run's (init_std aside: it is not used).
  auto same = cfg;
  same.model.init_std = config::from_text(info.config_ini, path).model.init_std;
  const std::string diff = model_config_diff(info.config_ini, config::to_ini(same));
  KUMIKO_USER_CHECK(diff.empty(), "train.init_from: ", path, " holds another model: ",
                    std::regex_replace(diff, std::regex("checkpoint "), "file "));
  KUMIKO_USER_CHECK(info.tokenizer_sha256.empty() || tokenizer_sha256.empty() || info.tokenizer_sha256 == tokenizer_sha256,
                    "train.init_from: ", path, " was trained with tokenizer ", info.tokenizer_sha256, " but data.dir's is ",
                    tokenizer_sha256, " (prepare the data with kumiko prepare --tokenizer ", info.tokenizer_path, ")");
  model::LogicalTensors whole;
  std::vector<float*> ptrs;
  for (const auto& spec : logical_specs) whole.emplace_back(static_cast<size_t>(numel_of(spec.shape)));
  for (auto& w : whole) ptrs.push_back(w.data());
  read_weights(path, logical_specs, ptrs);
  std::map<std::string, size_t> index;
  for (size_t i = 0; i < logical_specs.size(); ++i) index[logical_specs[i].name] = i;
  model::LogicalTensors mine;
  for (const auto& spec : stage_specs) mine.push_back(whole[index.at(spec.name)]);
  model::scatter_logical(params, mine, params.flat_values().data());
  log::get("train")->info("initialized from {} (its step {})", path, info.step);
}

}  // namespace

namespace {

// Rank 0 computes a string (a path) or fails with a UserError; every rank gets
// the same result or the same error, so no rank is left waiting in a collective.
template <typename F>
std::string agree(comm::Communicator& world, F&& compute) {
  int64_t status[2] = {0, 0};  // ok?, length
  std::string text;
  if (world.rank() == 0) {
    try {
      text = compute();
    } catch (const UserError& e) {
      text = e.what();
      status[0] = 1;
    }
    status[1] = static_cast<int64_t>(text.size());
  }
  world.broadcast(status, 2, 0);
  std::vector<int32_t> chars(status[1]);
  if (world.rank() == 0)
    for (size_t i = 0; i < text.size(); ++i) chars[i] = static_cast<unsigned char>(text[i]);
  world.broadcast(chars.data(), status[1], 0);
  text.assign(chars.begin(), chars.end());
  if (status[0]) throw UserError(text);
  return text;
}

// `text` as rank `root` has it, on every rank (collective).
std::string agree_from(comm::Communicator& world, int root, const std::string& text) {
  int64_t length = static_cast<int64_t>(text.size());
  world.broadcast(&length, 1, root);
  std::vector<int32_t> chars(static_cast<size_t>(length));
  if (world.rank() == root)
    for (size_t i = 0; i < text.size(); ++i) chars[i] = static_cast<unsigned char>(text[i]);
  world.broadcast(chars.data(), length, root);
  return std::string(chars.begin(), chars.end());
}

}  // namespace

// One run of the trainer: setup, then the step loop as named steps. Every member
// function that is collective says so; all ranks call it at the same point.
struct Trainer::State {
  State(const config::Config& c, comm::Communicator& w) : cfg(c), world(w) {}
  ~State() {
    try {
      background.wait();  // a save still being written finishes before the process goes on
    } catch (const std::exception& e) {
      ckpt_log->error("background checkpoint write failed: {}", e.what());
    }
  }

  RunSummary run();

  // ---- setup ----
  void setup_data();      // process grid, loader (or synthetic tokens), tokenizer identity
  void preflight(const plan::Memory& planned);
  void setup_engine();    // pipeline stage, the backend's engine (collective: every rank learns every error)
  void setup_files();     // logical tensor lists, checkpoint store, partial files removed
  void resume_or_init();  // the checkpoint to resume from, or the initial weights (collective)

  // ---- the step ----
  struct Gradients {
    int64_t step = 0, data_step = 0;  // the step computed (from 0) and the loader step it trains on
    double loss = 0, norm = 0, comm_s = 0;
    Clock::time_point t0;
  };
  bool stop_requested();                 // a stop signal on any rank (collective)
  Gradients compute_gradients();         // forward/backward over the micro-batches, reduction, norm (collective)
  enum class Verdict { apply, skip, rolled_back, stop };
  Verdict check_spike(const Gradients& g);  // train/spike.h, the same verdict on every rank (collective)
  bool skip_step(const Gradients& g, const char* why);  // true: stop (max_skipped_steps in a row)
  double apply_update(Gradients& g);     // clipping, LR schedule, AdamW; returns the LR
  void report(const Gradients& g, double lr);  // metrics.jsonl, TensorBoard, the log line, stragglers
  void after_step();                     // evaluation, samples, periodic checkpoints (collective)
  RunSummary finish();                   // the preemption or final checkpoint, weights_final.h5

  // ---- files and evaluation ----
  model::LogicalTensors gather_model(const float* flat);  // collective over tp and pp
  // Pointers to the logical tensors of a flat buffer: into the buffer itself when this
  // rank holds every tensor whole (tp = pp = 1: no copy), else into `store` (gathered).
  std::vector<const float*> logical_view(const float* flat, model::LogicalTensors& gathered);
  void write_weights_file(const fs::path& path, int64_t step);  // collective; rank 0 writes
  void restore(const std::string& path);                        // any layout's checkpoint
  // Collective: a snapshot of this rank's state, written by every rank (parallel HDF5)
  // or by rank 0 after gathering, in the background with checkpoint.async.
  void save(const char* why);
  void plan_shards();  // which parts of a parallel checkpoint this rank writes
  std::function<int64_t()> snapshot_sharded(const std::string& path);  // this rank's parts
  std::function<int64_t()> snapshot_gathered(const std::string& path, float* m, float* v);  // collective
  void finish_save();  // waits for a background save; logs it and its metrics (rank 0)
  std::pair<float*, float*> flat_moments(std::vector<float>& m_copy, std::vector<float>& v_copy);
  void evaluate(int64_t step);                                  // collective
  void print_sample(int64_t step);                              // collective over tp

  const config::Config& cfg;
  comm::Communicator& world;
  ThreadPlan threads;  // this rank's OpenMP threads and its node's (set before run())
  std::shared_ptr<spdlog::logger> log = log::get("train"), ckpt_log = log::get("ckpt");
  std::unique_ptr<parallel::ProcessGrid> grid;
  std::unique_ptr<data::Loader> loader;
  std::unique_ptr<comm::Communicator> embed_group;  // tied embedding across pipeline stages
  std::unique_ptr<parallel::Engine> engine;        // model, reduction, pipeline, optimizer on the backend
  std::unique_ptr<ckpt::Store> store;
  std::unique_ptr<MetricsLog> metrics;  // rank 0: metrics.jsonl and TensorBoard
  std::unique_ptr<data::Tokenizer> tokenizer;  // samples
  std::unique_ptr<SpikeDetector> spikes;
  std::unique_ptr<Stragglers> stragglers;
  std::vector<int32_t> inputs, targets;  // [micro_batch, T] (evaluation)
  CheckpointMeta meta;
  TrainState train;
  RunSummary summary;

  bool io = false;  // the rank that writes files
  int dp = 1, dp_rank = 0, pp = 1, chunks = 1;
  int64_t T = 0, MB = 0, GB = 0, local_batch = 0, micro_steps = 0, end = 0;
  model::Dims dims;
  model::PipelineStage stage;
  std::vector<int64_t> stage_layers;
  model::TensorParallel host_tp;  // tensor parallelism over the grid's host group (file gathers)
  std::vector<model::ParameterSpec> logical_specs, stage_specs;  // files hold logical tensors
  std::vector<std::vector<std::string>> names_by_stage;
  fs::path run_dir;
  std::string rollback_point;  // a checkpoint this run resumed from or wrote (spike rollbacks)
  // Checkpoint writing (setup_files): every rank its shards through parallel HDF5 over
  // ckpt_group (a copy of world, so that a background write's MPI-IO never mixes with
  // training's collectives), or rank 0 after gathering; in the background when async.
  bool parallel_ckpt = false, async_ckpt = false;
  std::unique_ptr<comm::Communicator> ckpt_group;
  BackgroundWrite background;
  std::shared_ptr<ShardedState> shards;  // this rank's parts (and a background write's copies)
  struct SaveReport {
    std::string path, why;
    int64_t step = 0, bytes = 0;
    double write_s = 0;
  };
  std::shared_ptr<SaveReport> pending_save;  // the background save being written
  double loss_scale = 0, flops_per_token = 0, train_seconds = 0;
  double peak_flops = 0;                 // per rank, for MFU (0 = unknown)
  double mem_plan_mb = 0, mem_base_mb = 0;  // kumiko plan's total for this rank; RSS before setup
  int64_t steps_here = 0, consecutive_skips = 0, eval_sequences = 0, val_windows = 0;
  int rollbacks = 0;
  int32_t stop = 0;
  Clock::time_point start_time;
};

Trainer::Trainer(config::Config config, comm::Communicator& world)
    : config_(std::move(config)), world_(world) {}
Trainer::~Trainer() = default;

RunSummary Trainer::run() {
  const ThreadPlan threads = set_rank_threads(config_.backend.threads, world_);
  SignalGuard signals;
  state_ = std::make_unique<State>(config_, world_);
  state_->threads = threads;
  return state_->run();
}

RunSummary Trainer::State::run() {
  setup_data();
  setup_engine();
  setup_files();
  resume_or_init();
  if (parallel_ckpt && async_ckpt && cfg.checkpoint.every_steps > 0) {
    // The background saves' snapshot buffer, allocated and touched before step 1.
    plan_shards();
    shards->reserve_snapshot();
    ckpt_log->info("checkpoint snapshot buffer: {:.1f} MB on this rank", shards->snapshot_elements * 4 / 1e6);
  }
  while (train.step < end) {
    if (stop_requested()) break;
    Gradients g = compute_gradients();
    // Every rank skips the same update when any rank saw a non-finite loss or gradient.
    int32_t bad = !(std::isfinite(g.loss) && std::isfinite(g.norm));
    world.all_reduce(&bad, 1, comm::ReduceOp::max);
    if (bad) {
      log->warn("step {}: non-finite loss {} or gradient norm {}: update skipped on every rank ({} in a row, "
                "limit train.max_skipped_steps = {})",
                g.step + 1, g.loss, g.norm, consecutive_skips + 1, cfg.train.max_skipped_steps);
      if (skip_step(g, "non-finite")) return summary;
      continue;
    }
    const Verdict verdict = check_spike(g);
    if (verdict == Verdict::stop) return summary;
    if (verdict != Verdict::apply) continue;
    consecutive_skips = 0;
    const double lr = apply_update(g);
    report(g, lr);
    after_step();
  }
  return finish();
}

void Trainer::State::setup_data() {
  grid = std::make_unique<parallel::ProcessGrid>(world, cfg.parallel);  // a wrong rank count fails first
  io = world.rank() == 0;
  dp = grid->dp();
  dp_rank = grid->dp_rank();
  T = cfg.data.seq_len;
  MB = cfg.train.micro_batch;
  GB = cfg.train.global_batch;
  if (!cfg.data.synthetic) {
    loader = std::make_unique<data::Loader>(cfg.data.dir, T, cfg.train.seed);
    KUMIKO_USER_CHECK(loader->vocab_size() <= cfg.model.vocab_size, "model.vocab_size = ", cfg.model.vocab_size,
                      " is smaller than the vocabulary of ", loader->tokenizer_path(), " (", loader->vocab_size(), ")");
    meta.tokenizer_sha256 = loader->tokenizer_sha256();
    meta.tokenizer_path = loader->tokenizer_path();
  }
  meta.config_ini = config::to_ini(cfg);
}

void Trainer::State::setup_engine() {
  local_batch = GB / dp;  // this dp rank's slice of the global batch
  micro_steps = local_batch / MB;
  dims = model::Dims::from(cfg.model);
  // Pipeline: this rank's stage (chunks of layers), one activation set per micro-batch.
  pp = grid->pp();
  chunks = pp > 1 ? cfg.parallel.pp_chunks : 1;
  {
    std::stringstream in(cfg.parallel.pp_layers);
    for (std::string item; std::getline(in, item, ',');) stage_layers.push_back(std::stoll(item));
  }
  if (pp > 1) {
    // Activation sets per chunk: as many micro-batches as the schedule keeps in flight.
    const auto kind = parallel::parse_schedule(cfg.parallel.pp_schedule);
    const int slots = parallel::activation_slots(
        parallel::build_schedule(kind, pp, grid->pp_rank(), static_cast<int>(micro_steps), chunks),
        static_cast<int>(micro_steps), chunks);
    stage = model::pipeline_stage(dims, pp, chunks, grid->pp_rank(), stage_layers, slots);
  }
  // The first and last pipeline stages both hold a tied embedding: its gradient is
  // summed between them (same dp and tp coordinates) every step.
  if (pp > 1 && dims.tied) {
    const bool member = grid->pp_rank() == 0 || grid->pp_rank() == pp - 1;
    const int coords = grid->dp_rank() * grid->tp() + grid->tp_rank();
    embed_group = world.split(member ? coords : grid->dp() * grid->tp() + world.rank(), world.rank(), "embed");
  }
  // The engine: model, gradient reduction, pipeline and optimizer on the backend.
  // Every rank learns whether every rank could build its own (a GPU without enough
  // free memory on one node must not leave the others waiting in a collective).
  parallel::EngineSetup setup;
  setup.config = &cfg;
  setup.grid = grid.get();
  setup.dims = dims;
  setup.stage = stage;
  setup.micro_batch = MB;
  setup.seq_len = T;
  setup.micro_steps = micro_steps;
  setup.embed_group = embed_group.get();
  std::string engine_error;
  bool user_error = false;
  plan::Memory planned;
  try {
    mem_base_mb = current_rss_mb();
    // The plan with the threads this rank runs (oneDNN's scratchpad grows with them).
    config::Config run_cfg = cfg;
    run_cfg.backend.threads = threads.threads;
    planned = plan::rank_memory(run_cfg, grid->pp_rank());
    mem_plan_mb = planned.total() / 1048576.0;
    preflight(planned);
    engine = cfg.backend.device == "cuda" ? gpu::make_cuda_engine(setup) : parallel::make_cpu_engine(setup);
    KUMIKO_CHECK(static_cast<double>(engine->arena_bytes()) <= planned.arena, "the model's arena (",
                 engine->arena_bytes(), " bytes) exceeds the plan (", planned.arena, " bytes)");
  } catch (const UserError& e) {
    engine_error = e.what();
    user_error = true;
  } catch (const Error& e) {
    engine_error = e.what();
  }
  int32_t failed[2] = {!engine_error.empty(), user_error};
  world.all_reduce(failed, 2, comm::ReduceOp::max);
  if (failed[0]) {
    // A rank with its own error reports it as it is; the others say a user error
    // when any rank had one (exit 2 everywhere), an internal error otherwise.
    if (!engine_error.empty()) {
      if (user_error) throw UserError(engine_error);
      throw Error(engine_error);
    }
    const std::string other =
        "backend.device = " + cfg.backend.device + ": another rank could not set up its model (its own message says why)";
    if (failed[1]) throw UserError(other);
    throw Error(other);
  }
  stage = engine->stage();
  engine->params().initialize(cfg.train.seed);
  log->info("{} backend: {}, arena {:.1f} MiB, planned {:.1f} MiB per rank (recompute = {})", cfg.backend.device,
            engine->describe(), engine->arena_bytes() / 1048576.0, mem_plan_mb, cfg.train.recompute);
  // The peak MFU is measured against: given, the GPU's datasheet, or the CPU's GEMM
  // peak measured by kumiko bench gemm.
  std::string peak_source = "backend.peak_gflops";
  peak_flops = cfg.backend.peak_gflops * 1e9;
  if (peak_flops <= 0 && cfg.backend.device == "cuda") {
    peak_flops = plan::gpu_peak_flops(gpu::device_name(), cfg.backend.dtype);
    peak_source = "the datasheet of " + gpu::device_name();
  } else if (peak_flops <= 0) {
    // bf16 against the fastest bf16 GEMM this machine has (the emulated one's is about
    // sgemm's), fp32 against sgemm.
    peak_flops =
        1e9 * plan::cached_cpu_peak_gflops(omp_get_max_threads(), plan::default_cache_dir(), cfg.backend.dtype);
    peak_source = "kumiko bench gemm (" + cfg.backend.dtype + ") at " + std::to_string(omp_get_max_threads()) +
                  " thread(s)";
  }
  if (peak_flops > 0)
    log->info("MFU against {:.1f} GFLOP/s per rank ({})", peak_flops / 1e9, peak_source);
  else
    log->info("MFU: n/a (no peak: run `kumiko bench gemm` once on this machine, or set backend.peak_gflops)");
  if (grid->tp() > 1) host_tp = {&grid->tp_group(), cfg.parallel.sequence_parallel};
}

// Before any allocation: does this rank's plan fit what the machine has? The host's
// available memory shared by the node's ranks, or the GPU's free memory.
void Trainer::State::preflight(const plan::Memory& planned) {
  const bool cuda = cfg.backend.device == "cuda";
  const int local = std::max(threads.node_ranks, 1);
  // Ranks sharing a GPU (backend.comm = mpi) share its free memory.
  const int per_gpu = cuda ? (local + std::max(gpu::visible_devices(), 1) - 1) / std::max(gpu::visible_devices(), 1) : 1;
  const double available = cuda ? static_cast<double>(gpu::free_device_memory()) / per_gpu
                                : available_host_bytes() / local;
  if (available <= 0) return;  // unknown
  const double need = planned.total();
  if (need <= available) return;
  const auto [largest, largest_bytes] = planned.largest();
  plan::Cluster cluster;
  cluster.ranks_per_node = 1;
  cluster.device.memory = available;
  const std::string fix = plan::cheapest_fix(cfg, cluster);
  constexpr double GiB = 1024.0 * 1024 * 1024;
  throw UserError(fmt::format(
      "this layout needs {:.2f} GiB per rank (largest term: {}, {:.2f} GiB) but {:.2f} GiB {} ({}); {}; see kumiko plan",
      need / GiB, largest, largest_bytes / GiB, available / GiB,
      cuda ? "of GPU memory are free per rank" : "of host memory are available per rank",
      cuda ? fmt::format("{}, {} rank(s) on it", gpu::device_name(), per_gpu)
           : fmt::format("MemAvailable over {} local rank(s)", local),
      fix.empty() ? "no single change (zero, recompute, micro_batch, pp) fits: use more ranks"
                  : "the cheapest change that fits: " + fix));
}

void Trainer::State::setup_files() {
  logical_specs = model::parameter_specs(dims);
  stage_specs = model::parameter_specs(dims, 1, 0, &stage);
  for (int r = 0; r < pp; ++r) {
    names_by_stage.emplace_back();
    const auto st = pp > 1 ? model::pipeline_stage(dims, pp, chunks, r, stage_layers, 1) : stage;
    for (const auto& spec : model::parameter_specs(dims, 1, 0, &st)) names_by_stage.back().push_back(spec.name);
  }
  train.seed = cfg.train.seed;
  run_dir = cfg.log.run_dir;
  agree(world, [&] {
    std::error_code ec;
    fs::create_directories(run_dir, ec);
    KUMIKO_USER_CHECK(!ec, run_dir.string(), ": cannot create the run folder (log.run_dir): ", ec.message());
    return std::string();
  });
  const std::string ckpt_dir = cfg.checkpoint.dir.empty() ? (run_dir / "checkpoints").string() : cfg.checkpoint.dir;
  // Rank 0 first: a folder that cannot be written is one error on every rank at start,
  // not a failed save hours later.
  agree(world, [&] {
    ckpt::Store check(ckpt_dir);
    return std::string();
  });
  store = std::make_unique<ckpt::Store>(ckpt_dir);
  if (io)
    if (const int n = store->remove_partials(); n > 0)
      ckpt_log->warn("removed {} partial checkpoint file(s) left by an interrupted save in {}", n, store->dir());
  const bool can_parallel = ckpt::H5Writer::parallel_available() && world.mpi_comm() != nullptr;
  const auto& writer = cfg.checkpoint.writer;
  KUMIKO_USER_CHECK(writer != "parallel" || can_parallel, "checkpoint.writer = parallel: ",
                    ckpt::H5Writer::parallel_available()
                        ? "needs MPI (this run has no MPI communicator)"
                        : "this build has serial HDF5 (install libhdf5-openmpi-dev and rebuild), or use auto/gather");
  parallel_ckpt = writer == "parallel" || (writer == "auto" && can_parallel && world.size() > 1);
  async_ckpt = cfg.checkpoint.async;
  if (async_ckpt && parallel_ckpt && !comm::mpi_thread_multiple()) {
    ckpt_log->warn("checkpoint.async: the MPI library does not provide MPI_THREAD_MULTIPLE, so parallel "
                   "checkpoint writes run in the foreground");
    async_ckpt = false;
  }
  if (parallel_ckpt) ckpt_group = world.split(0, world.rank(), "ckpt");
  ckpt_log->info("checkpoints: {}{}",
                 parallel_ckpt ? "every rank writes its own shards into one file (parallel HDF5)"
                               : "rank 0 gathers the tensors and writes the file",
                 async_ckpt ? ", in the background from a snapshot" : "");
}

namespace {
std::vector<const float*> const_ptrs(const model::LogicalTensors& t) {
  std::vector<const float*> out;
  for (const auto& x : t) out.push_back(x.data());
  return out;
}
}  // namespace

// This rank's logical tensors (gathered over tp) of a flat buffer, then over the
// pipeline stages: every tensor of the model on pp rank 0, nothing elsewhere.
model::LogicalTensors Trainer::State::gather_model(const float* flat) {
  auto mine = model::gather_logical(engine->params(), dims, stage, host_tp, flat);
  if (pp == 1) return mine;
  std::map<std::string, std::vector<float>> by_name;
  for (size_t i = 0; i < stage_specs.size(); ++i) by_name[stage_specs[i].name] = std::move(mine[i]);
  return parallel::gather_stages(grid->pp_group(), logical_specs, names_by_stage, std::move(by_name));
}

std::vector<const float*> Trainer::State::logical_view(const float* flat, model::LogicalTensors& gathered) {
  std::vector<const float*> out;
  if (grid->tp() == 1 && pp == 1) {
    const auto& params = engine->params();
    for (size_t i = 0; i < params.size(); ++i)
      out.push_back(flat + (params.value(static_cast<int>(i)) - params.flat_values().data()));
    return out;
  }
  gathered = gather_model(flat);
  return const_ptrs(gathered);
}

void Trainer::State::write_weights_file(const fs::path& path, int64_t step) {
  engine->download_parameters();  // the host parameters are a mirror on a device backend
  model::LogicalTensors gathered;
  const auto values = logical_view(engine->params().flat_values().data(), gathered);
  if (io)
    write_weights(path.string(), logical_specs, values,
                  {meta.config_ini, meta.tokenizer_sha256, meta.tokenizer_path, step});
}

// Loads a checkpoint (any layout's) into this rank's parameters and optimizer state:
// on resume and on a loss-spike rollback.
void Trainer::State::restore(const std::string& path) {
  finish_save();  // the file may be the one still being written
  auto& flat = engine->params();
  float *hm = nullptr, *hv = nullptr;
  if (grid->tp() == 1 && pp == 1 && engine->host_moments(&hm, &hv)) {
    // Every tensor whole on this rank, the moments on the host: read in place.
    auto in_place = [&](float* base) {
      std::vector<float*> out;
      for (size_t i = 0; i < flat.size(); ++i)
        out.push_back(base + (flat.value(static_cast<int>(i)) - flat.flat_values().data()));
      return out;
    };
    train = load_checkpoint(path, cfg, meta.tokenizer_sha256, stage_specs, in_place(flat.flat_values().data()),
                            in_place(hm), in_place(hv));
    engine->upload_parameters();
    engine->set_optimizer_steps(train.optimizer_steps);
    return;
  }
  // Each rank reads only the slabs of its own shards (any layout's file).
  auto& params = engine->params();
  std::vector<float> m(params.total_numel(), 0.0f), v(params.total_numel(), 0.0f);
  train = load_checkpoint(path, cfg, meta.tokenizer_sha256, params, m.data(), v.data());
  engine->upload_parameters();
  engine->scatter_moments(m.data(), v.data());
  engine->set_optimizer_steps(train.optimizer_steps);
}

void Trainer::State::resume_or_init() {
  // Rank 0 chooses the checkpoint, every rank loads it (logical tensors: any layout
  // reads any checkpoint).
  // Rank 0 lists the candidates (checkpoint.resume, or latest and then older ones);
  // every rank verifies its share of each file's datasets (checksums), and the first
  // sound one is loaded.
  const std::string& resume = cfg.checkpoint.resume;
  const std::string listed = agree(world, [&]() -> std::string {
    if (resume.empty()) return "";
    if (resume != "auto") {
      KUMIKO_USER_CHECK(fs::exists(resume), "checkpoint.resume: ", resume, ": no such checkpoint file");
      return resume;
    }
    std::vector<std::string> candidates;
    if (auto latest = store->latest()) candidates.push_back(*latest);
    for (const auto& f : store->list())
      if (candidates.empty() || !fs::exists(candidates[0]) || !fs::equivalent(f, candidates[0]))
        candidates.push_back(f);
    std::string joined;
    for (const auto& c : candidates) joined += c + "\n";
    if (joined.empty()) ckpt_log->info("resume=auto: no checkpoint in {}, starting fresh", store->dir());
    return joined;
  });
  std::string resume_path;
  std::istringstream candidates(listed);
  for (std::string c; resume_path.empty() && std::getline(candidates, c);) {
    const auto t0 = Clock::now();
    const auto problems = fs::exists(c) ? ckpt::verify_file(c, world.rank(), world.size())
                                        : std::vector<std::string>{c + ": missing"};
    // The last rank that found a problem (max of rank + 1; 0: none did).
    int32_t bad = problems.empty() ? 0 : world.rank() + 1;
    world.all_reduce(&bad, 1, comm::ReduceOp::max);
    if (bad == 0) {
      resume_path = c;
      ckpt_log->info("verified {} in {:.2f}s ({} rank(s) reading)", c,
                     std::chrono::duration<double>(Clock::now() - t0).count(), world.size());
      break;
    }
    const std::string problem = agree_from(world, bad - 1, problems.empty() ? "" : problems.front());
    KUMIKO_USER_CHECK(resume == "auto", "checkpoint.resume: ", c, " does not verify: ", problem);
    ckpt_log->error("checkpoint {} does not verify ({}); trying the one before", c, problem);
  }
  if (resume == "auto" && !listed.empty() && resume_path.empty())
    ckpt_log->info("resume=auto: no sound checkpoint in {}, starting fresh", store->dir());
  if (!resume_path.empty()) {
    const auto t0 = Clock::now();
    restore(resume_path);
    rollback_point = resume_path;
    summary.first_step = train.step;
    ckpt_log->info("resumed from {} at step {} ({} tokens seen), loaded in {:.2f}s", resume_path, train.step,
                   train.tokens_seen, std::chrono::duration<double>(Clock::now() - t0).count());
    if (io) {
      const std::string stored = ckpt::H5Reader(resume_path).read_string("/config");
      const std::string changed = run_config_changes(stored, meta.config_ini);
      if (!changed.empty())
        ckpt_log->info("settings changed since that checkpoint was written (the run continues with them; it "
                       "is bitwise the uninterrupted run only without such changes): {}",
                       changed);
    }
  } else {
    if (!cfg.train.init_from.empty())
      init_from_weights(cfg, meta.tokenizer_sha256, logical_specs, stage_specs, engine->params());
    // Initial: uploaded before the weights file, which reads the backend's copy.
    engine->upload_parameters();
    if (cfg.log.save_init_weights) write_weights_file(run_dir / "weights_init.h5", 0);
  }
  if (io) {
    std::ofstream(run_dir / "config.ini") << meta.config_ini;
    metrics = std::make_unique<MetricsLog>(run_dir.string(), cfg.log.tensorboard);
  }
  flops_per_token = model::train_flops_per_token(dims, T);
  log->info("model {}: {} layers, d_model {}, {} heads ({} kv), vocab {}, {:.2f}M parameters on this rank; "
            "{} ranks (dp {}, tp {}{}, pp {}, zero {}), {} threads per rank ({}); {:.1f} MFLOP per token",
            cfg.model.arch, dims.L, dims.C, dims.Hq, dims.Hkv, dims.V, engine->params().total_numel() / 1e6,
            world.size(), dp, grid->tp(), grid->tp() > 1 && cfg.parallel.sequence_parallel ? " with sp" : "", pp,
            cfg.parallel.zero, omp_get_max_threads(), threads.source, flops_per_token / 1e6);
  if (threads.oversubscribed() && threads.node_leader) log->warn("{}", oversubscription_warning(threads));

  inputs.resize(MB * T);
  targets.resize(MB * T);
  end = cfg.train.stop_at > 0 ? std::min(cfg.train.stop_at, cfg.train.steps) : cfg.train.steps;
  loss_scale = 1.0 / static_cast<double>(GB * T);
  start_time = Clock::now();
  // Validation: the same sequences under every layout, fixed by the config alone:
  // val windows 0 .. eval_batches x global_batch - 1 (window g mod W_val; see
  // docs/data-format.md), in micro-batch chunks dealt round-robin over dp. The loss is
  // the mean over all their tokens.
  eval_sequences = int64_t{cfg.train.eval_batches} * GB;
  val_windows = loader ? loader->num_windows(data::Split::val) : 0;
  if (loader && val_windows == 0)
    log->warn("data folder '{}': the val split has {} tokens, fewer than data.seq_len + 1 = {}: no validation "
              "loss is computed", cfg.data.dir, loader->num_tokens(data::Split::val), T + 1);
  else if (loader && eval_sequences > val_windows)
    log->warn("train.eval_batches x train.global_batch = {} validation sequences, but the val split has {} "
              "windows of data.seq_len + 1 tokens: some are evaluated more than once",
              eval_sequences, val_windows);
  if (pp > 1 && cfg.log.sample_every > 0)
    log->warn("log.sample_every: samples during training are not drawn with pipeline parallelism; use "
              "kumiko sample on a checkpoint");
  spikes = std::make_unique<SpikeDetector>(parse_spike_action(cfg.train.spike_action), cfg.train.spike_factor,
                                           cfg.train.spike_window, cfg.train.spike_grad_norm);
  stragglers = std::make_unique<Stragglers>(world, cfg.log.straggler_every, cfg.log.straggler_threshold);
}

bool Trainer::State::stop_requested() {
  comm::Watchdog::set_step(train.step + 1);  // the step being computed, for its messages
  // Every rank agrees at the step boundary whether a stop signal arrived anywhere.
  stop = static_cast<int32_t>(g_stop_signal);
  world.all_reduce(&stop, 1, comm::ReduceOp::max);
  return stop != 0;
}

Trainer::State::Gradients Trainer::State::compute_gradients() {
  Gradients g;
  g.step = train.step;
  // The batch this step trains on: the loader's position, which equals the step unless
  // a loss-spike rollback skipped batches (train/spike.h).
  g.data_step = train.loader_step;
  g.t0 = Clock::now();
  engine->zero_grads();
  const auto& t = cfg.train;
  if (t.inject_nan_step > 0 && g.step + 1 >= t.inject_nan_step && g.step + 1 < t.inject_nan_step + t.inject_nan_count &&
      world.rank() == t.inject_nan_rank)
    engine->poison_gradient();  // testing: poisons this rank's gradient
  auto fill = [&](int64_t micro, int32_t* in, int32_t* tg) {
    const int64_t first = dp_rank * local_batch + micro * MB;  // in the global batch
    if (loader)
      loader->fill(data::Split::train, g.data_step, GB, first, MB, in, tg);
    else
      synthetic_batch(cfg.train.seed, g.data_step, first, MB, T, dims.V, in, tg);
  };
  // testing: a poisoned batch, whose loss and gradient are inject_spike_scale times larger
  const bool poisoned = t.inject_spike_step > 0 && g.data_step + 1 == t.inject_spike_step;
  const float scale = static_cast<float>(loss_scale);
  const float step_scale = poisoned ? scale * static_cast<float>(t.inject_spike_scale) : scale;
  g.loss = engine->forward_backward(fill, step_scale);
  if (poisoned) g.loss *= t.inject_spike_scale;
  stragglers->test_delay();
  g.comm_s = engine->finish_reduction();
  const auto tc = Clock::now();
  grid->dp_group().all_reduce(&g.loss, 1, comm::ReduceOp::avg);
  g.norm = engine->grad_norm();
  g.comm_s += std::chrono::duration<double>(Clock::now() - tc).count();
  return g;
}

// Discards step g.step's update on every rank (non-finite values or a spike): the step
// and its batch are consumed. True when train.max_skipped_steps were skipped in a row.
bool Trainer::State::skip_step(const Gradients& g, const char* why) {
  ++consecutive_skips;
  ++train.skipped_steps;
  train.step = g.step + 1;
  train.loader_step = g.data_step + 1;
  train.tokens_seen += GB * T;
  summary.skipped.push_back(g.step + 1);
  summary.steps_taken = train.step;
  if (io)
    metrics->write(g.step + 1, {{"skipped", 1.0}, {"skipped_total", static_cast<double>(train.skipped_steps)},
                                {"skip_reason", why}, {"skipped_loss", g.loss}, {"skipped_grad_norm", g.norm}});
  if (consecutive_skips < cfg.train.max_skipped_steps) return false;
  log->error("{} skipped steps in a row (train.max_skipped_steps; the last: {}): stopping with exit code {}; the "
             "weights were never updated from them; lower train.lr or check the data, then resume",
             consecutive_skips, why, kExitNonFinite);
  summary.diverged = true;
  return true;
}

Trainer::State::Verdict Trainer::State::check_spike(const Gradients& g) {
  const int64_t step = g.step, data_step = g.data_step;
  const double loss = g.loss, norm = g.norm;
  std::string spike = spikes->check(loss, norm);
  int32_t is_spike = !spike.empty();
  world.all_reduce(&is_spike, 1, comm::ReduceOp::max);
  if (!is_spike) {
    spikes->accept(step + 1, loss);
    return Verdict::apply;
  }
  if (spike.empty()) spike = "another rank saw a spike";
  summary.spikes.push_back(step + 1);
  const auto action = spikes->action();
  if (action == SpikeAction::rollback) {
    const std::string& target = rollback_point;  // the same on every rank
    if (!target.empty() && rollbacks >= cfg.train.spike_max_rollbacks) {
      log->error("step {}: loss spike ({}) after {} rollbacks (train.spike_max_rollbacks): stopping with exit "
                 "code {}; resume from {} with a lower train.lr or another train.seed",
                 step + 1, spike, rollbacks, kExitNonFinite, target);
      if (io) metrics->write(step + 1, {{"spike", 1.0}, {"spike_action", "stop"}, {"spike_loss", loss}});
      summary.diverged = true;
      return Verdict::stop;
    }
    if (!target.empty()) {
      restore(target);
      const int64_t skip_from = train.loader_step;
      train.loader_step = data_step + 1;  // the batches since the checkpoint are never drawn again
      spikes->forget_after(train.step);
      consecutive_skips = 0;
      ++rollbacks;
      summary.rollbacks.push_back({step + 1, train.step, skip_from, data_step});
      log->warn("step {}: loss spike ({}): rolled back to {} (step {}); the batches of loader steps {}..{} "
                "are skipped (rollback {} of train.spike_max_rollbacks = {})",
                step + 1, spike, target, train.step, skip_from, data_step, rollbacks, cfg.train.spike_max_rollbacks);
      if (io)
        metrics->write(step + 1, {{"spike", 1.0}, {"spike_action", "rollback"}, {"spike_loss", loss},
                                  {"spike_grad_norm", norm}, {"rollback_to", static_cast<double>(train.step)},
                                  {"skip_from", static_cast<double>(skip_from)},
                                  {"skip_to", static_cast<double>(data_step)}});
      return Verdict::rolled_back;
    }
    log->warn("step {}: loss spike ({}), but no checkpoint to roll back to yet: the update is skipped", step + 1,
              spike);
  }
  if (action == SpikeAction::warn) {
    // Applied, so it joins the median: a lasting change of level stops being a spike.
    spikes->accept(step + 1, loss);
    log->warn("step {}: loss spike ({}); the update is applied (train.spike_action = warn)", step + 1, spike);
    if (io) metrics->write(step + 1, {{"spike", 1.0}, {"spike_action", "warn"}, {"spike_loss", loss}});
    return Verdict::apply;
  }
  log->warn("step {}: loss spike ({}): update skipped on every rank ({} in a row, limit "
            "train.max_skipped_steps = {})",
            step + 1, spike, consecutive_skips + 1, cfg.train.max_skipped_steps);
  return skip_step(g, "spike") ? Verdict::stop : Verdict::skip;
}

double Trainer::State::apply_update(Gradients& g) {
  const double clip =
      cfg.train.grad_clip > 0 && g.norm > cfg.train.grad_clip ? cfg.train.grad_clip / (g.norm + 1e-6) : 1.0;
  const double lr = learning_rate(cfg.train, g.step);
  g.comm_s += engine->step(lr, clip);
  train.optimizer_steps = engine->optimizer_steps();
  train.step = g.step + 1;
  train.loader_step = g.data_step + 1;
  train.tokens_seen += GB * T;
  ++steps_here;
  return lr;
}

void Trainer::State::report(const Gradients& g, double lr) {
  const double dt = std::chrono::duration<double>(Clock::now() - g.t0).count();
  train_seconds += dt;
  summary.losses.push_back(g.loss);
  summary.steps_taken = train.step;
  const double tokens_per_s = static_cast<double>(GB * T) / dt;
  // MFU needs a peak ([backend] peak_gflops); without one it is undefined: null in
  // metrics.jsonl and "n/a" in the log, never a 0 that reads as an idle machine.
  const bool has_peak = peak_flops > 0;
  const double mfu = has_peak ? tokens_per_s * flops_per_token / (peak_flops * world.size()) : 0.0;
  std::vector<Metric> fields{{"loss", g.loss},
                             {"lr", lr},
                             {"grad_norm", g.norm},
                             {"tokens_per_s", tokens_per_s},
                             {"mfu", has_peak ? std::optional<double>(mfu) : std::nullopt},
                             {"step_s", dt},
                             {"comm_s", g.comm_s},
                             {"bubble", engine->bubble_fraction()},
                             {"mem_peak_mb", peak_rss_mb()},
                             {"arena_mb", engine->arena_bytes() / 1048576.0},
                             {"mem_plan_mb", mem_plan_mb},
                             {"mem_base_mb", mem_base_mb}};
  // Stragglers: every log.straggler_every steps, each rank's compute time per step.
  if (const auto r = stragglers->after_step(train.step, dt - g.comm_s)) {
    fields.push_back({"slowest_rank", static_cast<double>(r->slowest_rank)});
    fields.push_back({"slowest_ms", r->slowest_ms});
    fields.push_back({"median_ms", r->median_ms});
    if (r->straggling)
      log->warn("straggler: rank {} on {} computed {:.1f} ms per step over the last {} steps, {:.0f}% above the "
                "median {:.1f} ms (log.straggler_threshold = {:.0f}%)",
                r->slowest_rank, r->slowest_host, r->slowest_ms, cfg.log.straggler_every,
                100 * (r->slowest_ms / r->median_ms - 1), r->median_ms, 100 * cfg.log.straggler_threshold);
  }
  if (io) metrics->write(train.step, fields);
  const bool last = train.step == end;
  if (cfg.log.every_steps > 0 && (train.step % cfg.log.every_steps == 0 || last)) {
    const double eta = train_seconds / steps_here * static_cast<double>(end - train.step);
    log->info("step {:>5}/{} | loss {:.4f} | lr {:.2e} | gnorm {:.3f} | {:.0f} tok/s | mfu {} | comm {:.0f} ms{} | eta {}",
              train.step, cfg.train.steps, g.loss, lr, g.norm, tokens_per_s,
              has_peak ? fmt::format("{:.1f}%", 100 * mfu) : std::string("n/a"), 1e3 * g.comm_s,
              pp > 1 ? fmt::format(" | bubble {:.0f}%", 100 * engine->bubble_fraction()) : std::string(),
              format_duration(eta));
  }
}

void Trainer::State::after_step() {
  if (background.done()) finish_save();  // report a finished background save
  const bool last = train.step == end;
  if ((cfg.train.eval_every > 0 && train.step % cfg.train.eval_every == 0) || last) evaluate(train.step);
  if (cfg.log.sample_every > 0 && (train.step % cfg.log.sample_every == 0 || last)) print_sample(train.step);
  if (cfg.checkpoint.every_steps > 0 && train.step % cfg.checkpoint.every_steps == 0 && !last) save("periodic");
}

RunSummary Trainer::State::finish() {
  if (stop && train.step < end) {
    log->warn("received {} at step {}: saving a checkpoint and exiting with code {}",
              stop == SIGTERM ? "SIGTERM" : "SIGUSR1", train.step, kExitPreempted);
    save("preemption");
    finish_save();
    summary.preempted = true;
    return summary;
  }
  save("final");
  finish_save();
  if (train.step == cfg.train.steps) write_weights_file(run_dir / "weights_final.h5", train.step);
  log->info("done: step {} of {} in {}, checkpoint {}", train.step, cfg.train.steps,
            format_duration(std::chrono::duration<double>(Clock::now() - start_time).count()), summary.last_checkpoint);
  return summary;
}

// AdamW's moments in the flat layout: in place where they live whole on the host, else
// gathered into the copies (collective over dp with ZeRO-1's shards).
std::pair<float*, float*> Trainer::State::flat_moments(std::vector<float>& m_copy, std::vector<float>& v_copy) {
  float *m = nullptr, *v = nullptr;
  if (!engine->host_moments(&m, &v)) {
    engine->gather_moments(m_copy, v_copy);
    m = m_copy.data();
    v = v_copy.data();
  }
  return {m, v};
}

// Which parts of the checkpoint this rank writes in a parallel write (once: the layout
// does not change): the tensors of its pipeline stage, each tensor-parallel shard by its
// own tp rank (a tensor held whole: tp rank 0), and the tensors spread over the
// data-parallel replicas (tensor i: dp rank i % dp), so that every rank writes about as
// much.
void Trainer::State::plan_shards() {
  if (shards) return;
  shards = std::make_shared<ShardedState>();
  shards->specs = logical_specs;
  shards->parts.resize(logical_specs.size());
  const auto& params = engine->params();
  std::map<std::string, int> local;
  for (size_t i = 0; i < params.size(); ++i) local[params.spec(static_cast<int>(i)).name] = static_cast<int>(i);
  for (size_t i = 0; i < logical_specs.size(); ++i) {
    const auto it = local.find(logical_specs[i].name);
    if (it == local.end()) continue;  // another stage's
    int owner = 0;  // the first stage holding it (a tied embedding is on two)
    while (std::find(names_by_stage[owner].begin(), names_by_stage[owner].end(), logical_specs[i].name) ==
           names_by_stage[owner].end())
      ++owner;
    const auto& spec = params.spec(it->second);
    if (owner != grid->pp_rank() || static_cast<int>(i % dp) != dp_rank) continue;
    if (spec.split == model::Split::none && grid->tp_rank() != 0) continue;
    auto& part = shards->parts[i];
    part.local = it->second;
    part.slabs = shard_slabs(spec);
    part.offset = shards->snapshot_elements;
    shards->snapshot_elements += 3 * params.numel(it->second);
  }
}

// This rank's parts of the checkpoint: pointers into the live buffers for a foreground
// write, a copy in the kept snapshot buffer for a background one. Collective over dp
// with ZeRO-1 (the moments are gathered).
std::function<int64_t()> Trainer::State::snapshot_sharded(const std::string& path) {
  auto moments = std::make_shared<std::pair<std::vector<float>, std::vector<float>>>();
  auto [m, v] = flat_moments(moments->first, moments->second);
  plan_shards();
  const auto& params = engine->params();
  bool in_place = !async_ckpt;
  for (const auto& part : shards->parts)
    if (part.local >= 0 && !is_slab_order(params.spec(part.local))) in_place = false;
  if (!in_place) shards->reserve_snapshot();
  const float* base = params.flat_values().data();
  for (auto& part : shards->parts) {
    if (part.local < 0) continue;
    const auto& spec = params.spec(part.local);
    const int64_t offset = params.value(part.local) - base, n = params.numel(part.local);
    const float* sources[3] = {base + offset, m + offset, v + offset};
    const float* out[3];
    for (int k = 0; k < 3; ++k) {
      if (in_place) {
        out[k] = sources[k];
        continue;
      }
      float* dst = shards->snapshot.data() + part.offset + k * n;
      const float* ordered = in_slab_order(spec, sources[k], dst);
      if (ordered != dst) std::copy_n(ordered, n, dst);
      out[k] = dst;
    }
    part.value = out[0];
    part.m = out[1];
    part.v = out[2];
  }
  return [this, path, shards = shards, moments, state = train, file_meta = meta,
          delay = cfg.checkpoint.write_delay_ms] {
    return save_checkpoint(path, *ckpt_group, *shards, state, file_meta, delay);
  };
}

// The logical tensors gathered to rank 0 (collective over dp with ZeRO-1, tp and pp),
// copied there when the write goes to the background.
std::function<int64_t()> Trainer::State::snapshot_gathered(const std::string& path, float* m, float* v) {
  model::LogicalTensors gathered_values, gathered_m, gathered_v;
  auto values = logical_view(engine->params().flat_values().data(), gathered_values);
  auto lm = logical_view(m, gathered_m);
  auto lv = logical_view(v, gathered_v);
  if (!io) return [] { return int64_t{0}; };
  auto owned = std::make_shared<std::array<model::LogicalTensors, 3>>();
  if (async_ckpt) {  // views into live buffers would change under the writer: copy
    int k = 0;
    for (auto* views : {&values, &lm, &lv}) {
      auto& copies = (*owned)[k++];
      for (size_t i = 0; i < logical_specs.size(); ++i)
        copies.emplace_back((*views)[i], (*views)[i] + numel_of(logical_specs[i].shape));
      *views = const_ptrs(copies);
    }
  } else {
    (*owned)[0] = std::move(gathered_values);
    (*owned)[1] = std::move(gathered_m);
    (*owned)[2] = std::move(gathered_v);
  }
  LogicalState tensors{logical_specs, values, lm, lv};
  return [path, owned, tensors, state = train, file_meta = meta, delay = cfg.checkpoint.write_delay_ms] {
    return save_checkpoint(path, tensors, state, file_meta, delay);
  };
}

void Trainer::State::save(const char* why) {
  const auto t0 = Clock::now();
  finish_save();  // one save at a time: the previous one is complete first (blocked time too)
  engine->download_parameters();
  train.optimizer_steps = engine->optimizer_steps();
  const std::string path = store->path_for(train.step);
  std::function<int64_t()> write;
  if (parallel_ckpt) {
    write = snapshot_sharded(path);
  } else {
    std::vector<float> m_copy, v_copy;
    auto [m, v] = flat_moments(m_copy, v_copy);
    write = snapshot_gathered(path, m, v);
  }
  auto report = std::make_shared<SaveReport>(SaveReport{path, why, train.step});
  // The write, then (rank 0) `latest` and retention: `latest` moves only once the file
  // is complete and renamed, after every rank's part is in it.
  auto job = [this, write = std::move(write), report] {
    const auto w0 = Clock::now();
    report->bytes = write();
    if (io) {
      store->set_latest(report->path);
      for (const auto& removed : store->apply_retention(cfg.checkpoint.keep_last))
        ckpt_log->info("retention: removed {}", removed);
    }
    report->write_s = std::chrono::duration<double>(Clock::now() - w0).count();
  };
  if (async_ckpt) {
    pending_save = report;
    background.start(std::move(job));
  } else {
    job();
    {
      // Nobody runs ahead of a checkpoint that is not committed. Rank 0 may write for
      // longer than comm_timeout_s, so this wait gets 10 times the timeout (the gathers
      // above are watched like every other collective).
      comm::WatchdogPause writing;
      world.barrier();
    }
    pending_save = report;
    finish_save();
  }
  // Training time the save took away (snapshot or gathers; with a foreground write also
  // the write and commit).
  const double blocked = std::chrono::duration<double>(Clock::now() - t0).count();
  if (io) metrics->write(train.step, {{"ckpt_blocked_s", blocked}});
  if (async_ckpt) ckpt_log->debug("checkpoint step {}: snapshot in {:.3f}s, writing in the background", train.step, blocked);
  summary.last_checkpoint = path;
  rollback_point = path;
}

void Trainer::State::finish_save() {
  background.wait();  // rethrows a failed write
  if (!pending_save) return;
  const auto r = std::move(pending_save);
  pending_save.reset();
  if (!io) return;
  ckpt_log->info("saved {} ({}) at step {}: {:.1f} MB in {:.2f}s ({:.0f} MB/s{})", r->path, r->why, r->step,
                 r->bytes / 1e6, r->write_s, r->bytes / 1e6 / std::max(r->write_s, 1e-9),
                 async_ckpt ? ", written in the background" : "");
  metrics->write(r->step, {{"ckpt_write_s", r->write_s}, {"ckpt_mb", r->bytes / 1e6}});
}

void Trainer::State::evaluate(int64_t step) {
  if (val_windows == 0) return;
  double total = 0;  // sum of token losses
  for (int64_t chunk = dp_rank; chunk < eval_sequences / MB; chunk += dp) {
    loader->fill(data::Split::val, 0, eval_sequences, chunk * MB, MB, inputs.data(), targets.data());
    total += engine->eval_loss_sum(inputs.data(), targets.data());
  }
  if (pp > 1) grid->pp_group().all_reduce(&total, 1, comm::ReduceOp::sum);  // the last stage's
  grid->dp_group().all_reduce(&total, 1, comm::ReduceOp::sum);
  const double val = total / static_cast<double>(eval_sequences * T);
  summary.last_val_loss = val;
  log->info("eval step {} | val_loss {:.4f} | val_ppl {:.2f}", step, val, std::exp(val));
  if (io) metrics->write(step, {{"val_loss", val}, {"val_ppl", std::exp(val)}});
}

// Periodic samples ([log] sample_every) from rank 0, to watch the model learn.
void Trainer::State::print_sample(int64_t step) {
  if (!loader || pp > 1) return;
  auto& params = engine->params();
  // The sampler needs the whole model on the host: with tp > 1 or a device backend,
  // gather it into an unsplit CPU copy.
  std::unique_ptr<model::Transformer<float>> whole;
  engine->download_parameters();
  if (grid->tp() > 1 || !engine->cpu_model()) {
    const auto values = model::gather_logical(params, dims, stage, host_tp, params.flat_values().data());
    if (io) {
      whole = std::make_unique<model::Transformer<float>>(dims, 1, 1);
      model::scatter_logical(*whole, values, whole->params().flat_values().data());
    }
  }
  if (!io) return;
  if (!tokenizer) tokenizer = std::make_unique<data::Tokenizer>(data::Tokenizer::load(loader->tokenizer_path()));
  std::vector<int32_t> prompt = tokenizer->encode("\n");
  if (prompt.empty()) prompt.push_back(tokenizer->eos_id());
  SamplingOptions o;
  o.max_new_tokens = 64;
  o.seed = cfg.train.seed + static_cast<uint64_t>(step);
  log->info("sample at step {}:\n{}", step,
            tokenizer->decode(generate(whole ? *whole : *engine->cpu_model(), prompt, T, o)));
}

}  // namespace kumiko::train
