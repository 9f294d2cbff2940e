#include "kumiko/train/trainer.h"

#include <omp.h>

#include <chrono>
#include <csignal>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <sstream>
#include <limits>

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
#include "kumiko/train/weights.h"

namespace kumiko::train {

void set_threads(int threads) {
  const int n = threads > 0 ? threads : omp_get_num_procs();
  omp_set_num_threads(n);
}

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

struct Trainer::State {
  std::unique_ptr<parallel::ProcessGrid> grid;
  std::unique_ptr<data::Loader> loader;
  std::unique_ptr<comm::Communicator> embed_group;  // tied embedding across pipeline stages
  std::unique_ptr<parallel::Engine> engine;        // model, reduction, pipeline, optimizer on the backend
  std::unique_ptr<ckpt::Store> store;
  std::unique_ptr<MetricsLog> metrics;  // rank 0: metrics.jsonl and TensorBoard
  std::vector<int32_t> inputs, targets;  // [micro_batch, T]
  CheckpointMeta meta;
  TrainState train;
};

Trainer::Trainer(config::Config config, comm::Communicator& world)
    : config_(std::move(config)), world_(world), state_(std::make_unique<State>()) {}
Trainer::~Trainer() = default;

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

}  // namespace

RunSummary Trainer::run() {
  const auto& cfg = config_;
  auto log = log::get("train");
  auto ckpt_log = log::get("ckpt");
  set_threads(cfg.backend.threads);
  SignalGuard signals;

  auto& s = *state_;
  s.grid = std::make_unique<parallel::ProcessGrid>(world_, cfg.parallel);
  const bool io = world_.rank() == 0;  // the rank that writes files
  const int dp = s.grid->dp(), dp_rank = s.grid->dp_rank();
  const int64_t T = cfg.data.seq_len, MB = cfg.train.micro_batch, GB = cfg.train.global_batch;
  const int64_t local_batch = GB / dp;  // this dp rank's slice of the global batch
  if (!cfg.data.synthetic) {
    s.loader = std::make_unique<data::Loader>(cfg.data.dir, T, cfg.train.seed);
    KUMIKO_USER_CHECK(s.loader->vocab_size() <= cfg.model.vocab_size, "model.vocab_size = ",
                      cfg.model.vocab_size, " is smaller than the vocabulary of ",
                      s.loader->tokenizer_path(), " (", s.loader->vocab_size(), ")");
    s.meta.tokenizer_sha256 = s.loader->tokenizer_sha256();
    s.meta.tokenizer_path = s.loader->tokenizer_path();
  }
  s.meta.config_ini = config::to_ini(cfg);

  const model::Dims dims = model::Dims::from(cfg.model);
  // Pipeline: this rank's stage (chunks of layers), one activation set per micro-batch.
  const int pp = s.grid->pp();
  const int chunks = pp > 1 ? cfg.parallel.pp_chunks : 1;
  const int64_t micro_steps = local_batch / MB;
  std::vector<int64_t> stage_layers;
  {
    std::stringstream in(cfg.parallel.pp_layers);
    for (std::string item; std::getline(in, item, ',');) stage_layers.push_back(std::stoll(item));
  }
  model::PipelineStage stage;
  if (pp > 1) {
    // Activation sets per chunk: as many micro-batches as the schedule keeps in flight.
    const auto kind = parallel::parse_schedule(cfg.parallel.pp_schedule);
    const int slots = parallel::activation_slots(
        parallel::build_schedule(kind, pp, s.grid->pp_rank(), static_cast<int>(micro_steps), chunks),
        static_cast<int>(micro_steps), chunks);
    stage = model::pipeline_stage(dims, pp, chunks, s.grid->pp_rank(), stage_layers, slots);
  }
  // The first and last pipeline stages both hold a tied embedding: its gradient is
  // summed between them (same dp and tp coordinates) every step.
  const bool tied_across_stages = pp > 1 && dims.tied;
  if (tied_across_stages) {
    const bool member = s.grid->pp_rank() == 0 || s.grid->pp_rank() == pp - 1;
    const int coords = s.grid->dp_rank() * s.grid->tp() + s.grid->tp_rank();
    s.embed_group = world_.split(member ? coords : s.grid->dp() * s.grid->tp() + world_.rank(), world_.rank(),
                                 "embed");
  }
  // The engine: model, gradient reduction, pipeline and optimizer on the backend.
  // Every rank learns whether every rank could build its own (a GPU without enough
  // free memory on one node must not leave the others waiting in a collective).
  {
    parallel::EngineSetup setup;
    setup.config = &cfg;
    setup.grid = s.grid.get();
    setup.dims = dims;
    setup.stage = stage;
    setup.micro_batch = MB;
    setup.seq_len = T;
    setup.micro_steps = micro_steps;
    setup.embed_group = s.embed_group.get();
    std::string engine_error;
    bool user_error = false;
    try {
      s.engine = cfg.backend.device == "cuda" ? gpu::make_cuda_engine(setup) : parallel::make_cpu_engine(setup);
    } catch (const UserError& e) {
      engine_error = e.what();
      user_error = true;
    } catch (const Error& e) {
      engine_error = e.what();
    }
    int32_t failed[2] = {!engine_error.empty(), user_error};
    world_.all_reduce(failed, 2, comm::ReduceOp::max);
    if (failed[0]) {
      // A rank with its own error reports it as it is; the others say a user error
      // when any rank had one (exit 2 everywhere), an internal error otherwise.
      if (!engine_error.empty()) {
        if (user_error) throw UserError(engine_error);
        throw Error(engine_error);
      }
      const std::string other = "backend.device = " + cfg.backend.device +
                                ": another rank could not set up its model (its own message says why)";
      if (failed[1]) throw UserError(other);
      throw Error(other);
    }
  }
  auto& engine = *s.engine;
  stage = engine.stage();
  auto& params = engine.params();
  params.initialize(cfg.train.seed);
  log->info("{} backend: {}, arena {:.1f} MiB", cfg.backend.device, engine.describe(), engine.arena_bytes() / 1048576.0);
  // The host parameters are a mirror on a device backend: refreshed before they are read.
  auto sync_host_params = [&] { engine.download_parameters(); };
  model::TensorParallel host_tp;  // tensor parallelism over the grid's host group (file gathers)
  if (s.grid->tp() > 1) host_tp = {&s.grid->tp_group(), cfg.parallel.sequence_parallel};
  // Files hold logical tensors: all of the model's, and this stage's.
  const std::vector<model::ParameterSpec> logical_specs = model::parameter_specs(dims);
  const std::vector<model::ParameterSpec> stage_specs = model::parameter_specs(dims, 1, 0, &stage);
  std::vector<std::vector<std::string>> names_by_stage;
  for (int r = 0; r < pp; ++r) {
    names_by_stage.emplace_back();
    const auto st = pp > 1 ? model::pipeline_stage(dims, pp, chunks, r, stage_layers, 1) : stage;
    for (const auto& spec : model::parameter_specs(dims, 1, 0, &st)) names_by_stage.back().push_back(spec.name);
  }
  // This rank's logical tensors (gathered over tp) of a flat buffer, then over the
  // pipeline stages: every tensor of the model on pp rank 0, nothing elsewhere.
  auto gather_model = [&](const float* flat) {
    auto mine = model::gather_logical(params, dims, stage, host_tp, flat);
    if (pp == 1) return mine;
    std::map<std::string, std::vector<float>> by_name;
    for (size_t i = 0; i < stage_specs.size(); ++i) by_name[stage_specs[i].name] = std::move(mine[i]);
    return parallel::gather_stages(s.grid->pp_group(), logical_specs, names_by_stage, std::move(by_name));
  };
  auto const_ptrs = [](const model::LogicalTensors& t) {
    std::vector<const float*> out;
    for (const auto& x : t) out.push_back(x.data());
    return out;
  };
  auto mut_ptrs = [](model::LogicalTensors& t) {
    std::vector<float*> out;
    for (auto& x : t) out.push_back(x.data());
    return out;
  };
  auto empty_logical = [&] {
    model::LogicalTensors t;
    for (const auto& spec : stage_specs) t.emplace_back(static_cast<size_t>(numel_of(spec.shape)));
    return t;
  };
  // Writes a weights file of the current parameters (collective over tp and pp; rank 0 writes).
  auto write_weights_file = [&](const fs::path& path, int64_t step) {
    sync_host_params();
    const auto values = gather_model(params.flat_values().data());
    if (io)
      write_weights(path.string(), logical_specs, const_ptrs(values),
                    {s.meta.config_ini, s.meta.tokenizer_sha256, s.meta.tokenizer_path, step});
  };
  s.train.seed = cfg.train.seed;

  const fs::path run_dir(cfg.log.run_dir);
  if (io) fs::create_directories(run_dir);
  s.store = std::make_unique<ckpt::Store>(cfg.checkpoint.dir.empty() ? (run_dir / "checkpoints").string()
                                                                       : cfg.checkpoint.dir);
  if (io)
    if (const int n = s.store->remove_partials(); n > 0)
      ckpt_log->warn("removed {} partial checkpoint file(s) left by an interrupted save in {}", n,
                     s.store->dir());

  // Resume: rank 0 chooses the checkpoint, every rank loads it (logical tensors:
  // any layout reads any checkpoint).
  RunSummary summary;
  const std::string resume_path = agree(world_, [&]() -> std::string {
    const std::string& resume = cfg.checkpoint.resume;
    if (resume.empty()) return "";
    if (resume != "auto") {
      KUMIKO_USER_CHECK(fs::exists(resume), "checkpoint.resume: ", resume, ": no such checkpoint file");
      const auto problems = ckpt::verify_file(resume);
      KUMIKO_USER_CHECK(problems.empty(), "checkpoint.resume: ", resume, " does not verify: ", problems.front());
      return resume;
    }
    std::vector<std::string> candidates;
    if (auto latest = s.store->latest()) candidates.push_back(*latest);
    for (const auto& f : s.store->list())
      if (candidates.empty() || !fs::exists(candidates[0]) || !fs::equivalent(f, candidates[0]))
        candidates.push_back(f);
    for (const auto& c : candidates) {
      const auto problems = fs::exists(c) ? ckpt::verify_file(c) : std::vector<std::string>{c + ": missing"};
      if (problems.empty()) return c;
      ckpt_log->error("checkpoint {} does not verify ({}); trying the one before", c, problems.front());
    }
    ckpt_log->info("resume=auto: no checkpoint in {}, starting fresh", s.store->dir());
    return "";
  });
  // The checkpoint a loss-spike rollback returns to: one this run resumed from or
  // wrote (never a stale `latest` of an earlier run in the same folder).
  std::string rollback_point;
  // Loads a checkpoint (any layout's) into this rank's parameters and optimizer state:
  // on resume and on a loss-spike rollback.
  auto restore = [&](const std::string& path) {
    auto values = empty_logical(), lm = empty_logical(), lv = empty_logical();
    s.train = load_checkpoint(path, cfg, s.meta.tokenizer_sha256, stage_specs, mut_ptrs(values),
                              mut_ptrs(lm), mut_ptrs(lv));
    std::vector<float> m(params.total_numel(), 0.0f), v(params.total_numel(), 0.0f);
    model::scatter_logical(params, values, params.flat_values().data());
    model::scatter_logical(params, lm, m.data());
    model::scatter_logical(params, lv, v.data());
    engine.upload_parameters();
    engine.scatter_moments(m.data(), v.data());
    engine.set_optimizer_steps(s.train.optimizer_steps);
  };
  if (!resume_path.empty()) {
    restore(resume_path);
    rollback_point = resume_path;
    summary.first_step = s.train.step;
    ckpt_log->info("resumed from {} at step {} ({} tokens seen)", resume_path, s.train.step,
                   s.train.tokens_seen);
  } else {
    if (!cfg.train.init_from.empty()) init_from_weights(cfg, s.meta.tokenizer_sha256, logical_specs, stage_specs,
                                                        params);
    // Initial: uploaded before the weights file, whose sync_host_params() reads the backend.
    engine.upload_parameters();
    write_weights_file(run_dir / "weights_init.h5", 0);
  }
  if (io) {
    std::ofstream(run_dir / "config.ini") << s.meta.config_ini;
    s.metrics = std::make_unique<MetricsLog>(run_dir.string(), cfg.log.tensorboard);
  }

  const double flops_per_token = model::train_flops_per_token(dims, T);
  log->info("model {}: {} layers, d_model {}, {} heads ({} kv), vocab {}, {:.2f}M parameters on this rank; "
            "{} ranks (dp {}, tp {}{}, pp {}, zero {}), {} threads per rank; {:.1f} MFLOP per token",
            cfg.model.arch, dims.L, dims.C, dims.Hq, dims.Hkv, dims.V, params.total_numel() / 1e6,
            world_.size(), dp, s.grid->tp(), s.grid->tp() > 1 && cfg.parallel.sequence_parallel ? " with sp" : "",
            pp, cfg.parallel.zero, omp_get_max_threads(), flops_per_token / 1e6);

  auto save = [&](const char* why) {
    const auto t0 = Clock::now();
    std::vector<float> m, v;
    sync_host_params();
    engine.gather_moments(m, v);  // collective over dp (ZeRO shards)
    // Logical tensors from the tp shards (collective over tp).
    const auto values = gather_model(params.flat_values().data());
    const auto lm = gather_model(m.data());
    const auto lv = gather_model(v.data());
    s.train.optimizer_steps = engine.optimizer_steps();
    const std::string path = s.store->path_for(s.train.step);
    if (io) {
      const LogicalState tensors{logical_specs, const_ptrs(values), const_ptrs(lm), const_ptrs(lv)};
      const int64_t bytes = save_checkpoint(path, tensors, s.train, s.meta, cfg.checkpoint.write_delay_ms);
      s.store->set_latest(path);
      for (const auto& removed : s.store->apply_retention(cfg.checkpoint.keep_last))
        ckpt_log->info("retention: removed {}", removed);
      const double dt = std::chrono::duration<double>(Clock::now() - t0).count();
      ckpt_log->info("saved {} ({}) at step {}: {:.1f} MB in {:.2f}s ({:.0f} MB/s)", path, why, s.train.step,
                     bytes / 1e6, dt, bytes / 1e6 / std::max(dt, 1e-9));
    }
    {
      // Nobody runs ahead of a checkpoint that is not committed. Rank 0 may write for
      // longer than comm_timeout_s, so this wait gets 10 times the timeout (the gathers
      // above are watched like every other collective).
      comm::WatchdogPause writing;
      world_.barrier();
    }
    // Training time the save took away (gathers, write, commit): every rank waited for it.
    if (io) s.metrics->write(s.train.step, {{"ckpt_blocked_s", std::chrono::duration<double>(Clock::now() - t0).count()}});
    summary.last_checkpoint = path;
    rollback_point = path;
  };

  s.inputs.resize(MB * T);
  s.targets.resize(MB * T);
  const int64_t end = cfg.train.stop_at > 0 ? std::min(cfg.train.stop_at, cfg.train.steps) : cfg.train.steps;
  const float loss_scale = 1.0f / static_cast<float>(GB * T);
  const auto start_time = Clock::now();
  double train_seconds = 0;
  int64_t steps_here = 0;

  // Validation: the same sequences under every layout, fixed by the config alone:
  // val windows 0 .. eval_batches x global_batch - 1 (window g mod W_val; see
  // docs/data-format.md), in micro-batch chunks dealt round-robin over dp. The loss is
  // the mean over all their tokens.
  const int64_t eval_sequences = int64_t{cfg.train.eval_batches} * GB;
  const int64_t val_windows = s.loader ? s.loader->num_windows(data::Split::val) : 0;
  if (s.loader && val_windows == 0)
    log->warn("data folder '{}': the val split has {} tokens, fewer than data.seq_len + 1 = {}: no validation "
              "loss is computed", cfg.data.dir, s.loader->num_tokens(data::Split::val), T + 1);
  else if (s.loader && eval_sequences > val_windows)
    log->warn("train.eval_batches x train.global_batch = {} validation sequences, but the val split has {} "
              "windows of data.seq_len + 1 tokens: some are evaluated more than once",
              eval_sequences, val_windows);
  auto evaluate = [&](int64_t step) {
    if (val_windows == 0) return;
    double total = 0;  // sum of token losses
    for (int64_t chunk = dp_rank; chunk < eval_sequences / MB; chunk += dp) {
      s.loader->fill(data::Split::val, 0, eval_sequences, chunk * MB, MB, s.inputs.data(), s.targets.data());
      total += engine.eval_loss_sum(s.inputs.data(), s.targets.data());
    }
    if (pp > 1) s.grid->pp_group().all_reduce(&total, 1, comm::ReduceOp::sum);  // the last stage's
    s.grid->dp_group().all_reduce(&total, 1, comm::ReduceOp::sum);
    const double val = total / static_cast<double>(eval_sequences * T);
    summary.last_val_loss = val;
    log->info("eval step {} | val_loss {:.4f} | val_ppl {:.2f}", step, val, std::exp(val));
    if (io) {
      s.metrics->write(step, {{"val_loss", val}, {"val_ppl", std::exp(val)}});
    }
  };

  // Periodic samples ([log] sample_every) from rank 0, to watch the model learn.
  std::unique_ptr<data::Tokenizer> tokenizer;
  if (pp > 1 && cfg.log.sample_every > 0)
    log->warn("log.sample_every: samples during training are not drawn with pipeline parallelism; use "
              "kumiko sample on a checkpoint");
  auto print_sample = [&](int64_t step) {
    if (!s.loader || pp > 1) return;
    // The sampler needs the whole model: with tp > 1, gather it into an unsplit copy.
    std::unique_ptr<model::Transformer<float>> whole;
    sync_host_params();
    if (s.grid->tp() > 1 || !engine.cpu_model()) {
      const auto values = model::gather_logical(params, dims, stage, host_tp, params.flat_values().data());
      if (io) {
        whole = std::make_unique<model::Transformer<float>>(dims, 1, 1);
        model::scatter_logical(*whole, values, whole->params().flat_values().data());
      }
    }
    if (!io) return;
    if (!tokenizer) tokenizer = std::make_unique<data::Tokenizer>(data::Tokenizer::load(s.loader->tokenizer_path()));
    std::vector<int32_t> prompt = tokenizer->encode("\n");
    if (prompt.empty()) prompt.push_back(tokenizer->eos_id());
    SamplingOptions o;
    o.max_new_tokens = 64;
    o.seed = cfg.train.seed + static_cast<uint64_t>(step);
    log->info("sample at step {}:\n{}", step, tokenizer->decode(generate(whole ? *whole : *engine.cpu_model(), prompt, T, o)));
  };

  int32_t stop = 0;
  int64_t consecutive_skips = 0;
  SpikeDetector spikes(parse_spike_action(cfg.train.spike_action), cfg.train.spike_factor, cfg.train.spike_window,
                       cfg.train.spike_grad_norm);
  int rollbacks = 0;
  Stragglers stragglers(world_, cfg.log.straggler_every, cfg.log.straggler_threshold);
  // Discards step `step`'s update on every rank (non-finite values or a spike): the step
  // and its batch are consumed. True when train.max_skipped_steps were skipped in a row.
  auto skip_step = [&](int64_t step, int64_t data_step, double loss, double norm, const char* why) {
    ++consecutive_skips;
    ++s.train.skipped_steps;
    s.train.step = step + 1;
    s.train.loader_step = data_step + 1;
    s.train.tokens_seen += GB * T;
    summary.skipped.push_back(step + 1);
    summary.steps_taken = s.train.step;
    if (io)
      s.metrics->write(step + 1, {{"skipped", 1.0}, {"skipped_total", static_cast<double>(s.train.skipped_steps)},
                                  {"skip_reason", why}, {"skipped_loss", loss}, {"skipped_grad_norm", norm}});
    if (consecutive_skips < cfg.train.max_skipped_steps) return false;
    log->error("{} skipped steps in a row (train.max_skipped_steps; the last: {}): stopping with exit code {}; the "
               "weights were never updated from them; lower train.lr or check the data, then resume",
               consecutive_skips, why, kExitNonFinite);
    summary.diverged = true;
    return true;
  };
  while (s.train.step < end) {
    comm::Watchdog::set_step(s.train.step + 1);  // the step being computed, for its messages
    // Every rank agrees at the step boundary whether a stop signal arrived anywhere.
    stop = static_cast<int32_t>(g_stop_signal);
    world_.all_reduce(&stop, 1, comm::ReduceOp::max);
    if (stop) break;
    const int64_t step = s.train.step;
    // The batch this step trains on: the loader's position, which equals the step unless
    // a loss-spike rollback skipped batches (train/spike.h).
    const int64_t data_step = s.train.loader_step;
    const auto t0 = Clock::now();
    engine.zero_grads();
    const auto& t = cfg.train;
    if (t.inject_nan_step > 0 && step + 1 >= t.inject_nan_step && step + 1 < t.inject_nan_step + t.inject_nan_count &&
        world_.rank() == t.inject_nan_rank) {
      // testing: poisons this rank's gradient
      engine.poison_gradient();
    }
    double loss = 0;
    auto fill = [&](int64_t micro, int32_t* in, int32_t* tg) {
      const int64_t first = dp_rank * local_batch + micro * MB;  // in the global batch
      if (s.loader)
        s.loader->fill(data::Split::train, data_step, GB, first, MB, in, tg);
      else
        synthetic_batch(cfg.train.seed, data_step, first, MB, T, dims.V, in, tg);
    };
    // testing: a poisoned batch, whose loss and gradient are inject_spike_scale times larger
    const bool poisoned = t.inject_spike_step > 0 && data_step + 1 == t.inject_spike_step;
    const float step_scale = poisoned ? loss_scale * static_cast<float>(t.inject_spike_scale) : loss_scale;
    loss = engine.forward_backward(fill, step_scale);
    if (poisoned) loss *= t.inject_spike_scale;
    stragglers.test_delay();
    double comm_s = engine.finish_reduction();
    const auto tc = Clock::now();
    s.grid->dp_group().all_reduce(&loss, 1, comm::ReduceOp::avg);
    const double norm = engine.grad_norm();
    comm_s += std::chrono::duration<double>(Clock::now() - tc).count();
    // Every rank skips the same update when any rank saw a non-finite loss or gradient.
    int32_t bad = !(std::isfinite(loss) && std::isfinite(norm));
    world_.all_reduce(&bad, 1, comm::ReduceOp::max);
    if (bad) {
      log->warn("step {}: non-finite loss {} or gradient norm {}: update skipped on every rank ({} in a row, "
                "limit train.max_skipped_steps = {})",
                step + 1, loss, norm, consecutive_skips + 1, cfg.train.max_skipped_steps);
      if (skip_step(step, data_step, loss, norm, "non-finite")) return summary;
      continue;
    }
    // A loss spike (train/spike.h): the same verdict on every rank.
    std::string spike = spikes.check(loss, norm);
    int32_t is_spike = !spike.empty();
    world_.all_reduce(&is_spike, 1, comm::ReduceOp::max);
    if (is_spike) {
      if (spike.empty()) spike = "another rank saw a spike";
      summary.spikes.push_back(step + 1);
      const auto action = spikes.action();
      if (action == SpikeAction::rollback) {
        const std::string& target = rollback_point;  // the same on every rank
        if (!target.empty() && rollbacks >= cfg.train.spike_max_rollbacks) {
          log->error("step {}: loss spike ({}) after {} rollbacks (train.spike_max_rollbacks): stopping with exit "
                     "code {}; resume from {} with a lower train.lr or another train.seed",
                     step + 1, spike, rollbacks, kExitNonFinite, target);
          if (io) s.metrics->write(step + 1, {{"spike", 1.0}, {"spike_action", "stop"}, {"spike_loss", loss}});
          summary.diverged = true;
          return summary;
        }
        if (!target.empty()) {
          restore(target);
          const int64_t skip_from = s.train.loader_step;
          s.train.loader_step = data_step + 1;  // the batches since the checkpoint are never drawn again
          spikes.forget_after(s.train.step);
          consecutive_skips = 0;
          ++rollbacks;
          summary.rollbacks.push_back({step + 1, s.train.step, skip_from, data_step});
          log->warn("step {}: loss spike ({}): rolled back to {} (step {}); the batches of loader steps {}..{} "
                    "are skipped (rollback {} of train.spike_max_rollbacks = {})",
                    step + 1, spike, target, s.train.step, skip_from, data_step, rollbacks,
                    cfg.train.spike_max_rollbacks);
          if (io)
            s.metrics->write(step + 1, {{"spike", 1.0}, {"spike_action", "rollback"}, {"spike_loss", loss},
                                        {"spike_grad_norm", norm}, {"rollback_to", static_cast<double>(s.train.step)},
                                        {"skip_from", static_cast<double>(skip_from)},
                                        {"skip_to", static_cast<double>(data_step)}});
          continue;
        }
        log->warn("step {}: loss spike ({}), but no checkpoint to roll back to yet: the update is skipped", step + 1,
                  spike);
      }
      if (action == SpikeAction::warn) {
        // Applied, so it joins the median: a lasting change of level stops being a spike.
        spikes.accept(step + 1, loss);
        log->warn("step {}: loss spike ({}); the update is applied (train.spike_action = warn)", step + 1, spike);
        if (io) s.metrics->write(step + 1, {{"spike", 1.0}, {"spike_action", "warn"}, {"spike_loss", loss}});
      } else {
        log->warn("step {}: loss spike ({}): update skipped on every rank ({} in a row, limit "
                  "train.max_skipped_steps = {})",
                  step + 1, spike, consecutive_skips + 1, cfg.train.max_skipped_steps);
        if (skip_step(step, data_step, loss, norm, "spike")) return summary;
        continue;
      }
    } else {
      spikes.accept(step + 1, loss);
    }
    consecutive_skips = 0;
    const double clip =
        cfg.train.grad_clip > 0 && norm > cfg.train.grad_clip ? cfg.train.grad_clip / (norm + 1e-6) : 1.0;
    const double lr = learning_rate(cfg.train, step);
    comm_s += engine.step(lr, clip);
    s.train.optimizer_steps = engine.optimizer_steps();
    s.train.step = step + 1;
    s.train.loader_step = data_step + 1;
    s.train.tokens_seen += GB * T;
    ++steps_here;
    const double dt = std::chrono::duration<double>(Clock::now() - t0).count();
    train_seconds += dt;
    summary.losses.push_back(loss);
    summary.steps_taken = s.train.step;

    const double tokens_per_s = static_cast<double>(GB * T) / dt;
    // MFU needs a peak ([backend] peak_gflops); without one it is undefined: null in
    // metrics.jsonl and "n/a" in the log, never a 0 that reads as an idle machine.
    const bool has_peak = cfg.backend.peak_gflops > 0;
    const double mfu =
        has_peak ? tokens_per_s * flops_per_token / (cfg.backend.peak_gflops * 1e9 * world_.size()) : 0.0;
    std::vector<Metric> fields{{"loss", loss},
                               {"lr", lr},
                               {"grad_norm", norm},
                               {"tokens_per_s", tokens_per_s},
                               {"mfu", has_peak ? std::optional<double>(mfu) : std::nullopt},
                               {"step_s", dt},
                               {"comm_s", comm_s},
                               {"bubble", engine.bubble_fraction()},
                               {"mem_peak_mb", peak_rss_mb()}};
    // Stragglers: every log.straggler_every steps, each rank's compute time per step.
    if (const auto report = stragglers.after_step(s.train.step, dt - comm_s)) {
      fields.push_back({"slowest_rank", static_cast<double>(report->slowest_rank)});
      fields.push_back({"slowest_ms", report->slowest_ms});
      fields.push_back({"median_ms", report->median_ms});
      if (report->straggling)
        log->warn("straggler: rank {} on {} computed {:.1f} ms per step over the last {} steps, {:.0f}% above the "
                  "median {:.1f} ms (log.straggler_threshold = {:.0f}%)",
                  report->slowest_rank, report->slowest_host, report->slowest_ms, cfg.log.straggler_every,
                  100 * (report->slowest_ms / report->median_ms - 1), report->median_ms,
                  100 * cfg.log.straggler_threshold);
    }
    if (io) s.metrics->write(s.train.step, fields);
    const bool last = s.train.step == end;
    if (cfg.log.every_steps > 0 && (s.train.step % cfg.log.every_steps == 0 || last)) {
      const double eta = train_seconds / steps_here * static_cast<double>(end - s.train.step);
      log->info("step {:>5}/{} | loss {:.4f} | lr {:.2e} | gnorm {:.3f} | {:.0f} tok/s | mfu {} | comm {:.0f} ms{} | eta {}",
                s.train.step, cfg.train.steps, loss, lr, norm, tokens_per_s,
                has_peak ? fmt::format("{:.1f}%", 100 * mfu) : std::string("n/a"),
                1e3 * comm_s,
                pp > 1 ? fmt::format(" | bubble {:.0f}%", 100 * engine.bubble_fraction()) : std::string(),
                format_duration(eta));
    }
    if ((cfg.train.eval_every > 0 && s.train.step % cfg.train.eval_every == 0) || last) evaluate(s.train.step);
    if (cfg.log.sample_every > 0 && (s.train.step % cfg.log.sample_every == 0 || last)) print_sample(s.train.step);
    if (cfg.checkpoint.every_steps > 0 && s.train.step % cfg.checkpoint.every_steps == 0 && !last)
      save("periodic");
  }
  if (stop && s.train.step < end) {
    log->warn("received {} at step {}: saving a checkpoint and exiting with code {}",
              stop == SIGTERM ? "SIGTERM" : "SIGUSR1", s.train.step, kExitPreempted);
    save("preemption");
    summary.preempted = true;
    return summary;
  }
  save("final");
  if (s.train.step == cfg.train.steps) write_weights_file(run_dir / "weights_final.h5", s.train.step);
  log->info("done: step {} of {} in {}, checkpoint {}", s.train.step, cfg.train.steps,
            format_duration(std::chrono::duration<double>(Clock::now() - start_time).count()),
            summary.last_checkpoint);
  return summary;
}

}  // namespace kumiko::train
