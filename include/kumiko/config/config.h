#pragma once
// kumiko's configuration: one INI file with one section per subsystem, where every
// key is also a command-line option (`--train.lr=1e-3`) and the command line wins.
// docs/config.md lists every key; configs/*.ini are ready-made files.
//
// Use from a subcommand:
//   Config config;
//   add_options(*sub, config);            // --config FILE and --section.key options
//   ... app.parse(argc, argv) ...          // parse errors: describe_parse_error(e, config)
//   validate(config);                      // cross-field checks, throws kumiko::UserError
#include <cstdint>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

namespace kumiko::config {

struct ModelConfig {
  std::string arch = "gpt2";  // gpt2|llama
  int n_layers = 4;
  int n_heads = 4;
  int n_kv_heads = 0;  // 0 = n_heads (llama grouped-query attention when smaller)
  int d_model = 128;
  int d_ff = 0;  // 0 = 4*d_model
  int vocab_size = 4096;
  int max_seq_len = 256;
  bool tie_embeddings = true;
  double norm_eps = 1e-5;
  double rope_theta = 10000.0;  // llama only
  double init_std = 0.02;

  int kv_heads() const { return n_kv_heads == 0 ? n_heads : n_kv_heads; }
  int ff_dim() const { return d_ff == 0 ? 4 * d_model : d_ff; }
  int head_dim() const { return n_heads > 0 ? d_model / n_heads : 0; }
};

struct DataConfig {
  std::string dir = "runs/data/shakespeare";
  int seq_len = 128;
  bool synthetic = false;  // random tokens, for benchmarks
};

struct TrainConfig {
  int64_t steps = 1000;
  int global_batch = 8;  // sequences per optimizer step, all ranks together
  int micro_batch = 8;   // sequences per forward/backward on one data-parallel rank
  std::string recompute = "none";  // none|selective|full: activations backward re-creates (docs/training.md)
  double lr = 1e-3;
  double min_lr = 1e-4;
  int64_t warmup_steps = 100;
  std::string decay = "cosine";  // cosine|linear|constant
  double weight_decay = 0.1;
  double grad_clip = 1.0;  // 0 = no clipping
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  uint64_t seed = 1234;
  std::string init_from;  // "" = counter-based init from seed; else a weights file (kumiko import-hf, weights_final.h5)
  int64_t eval_every = 100;  // 0 = never
  int eval_batches = 8;
  int64_t stop_at = 0;  // 0 = run to steps; else stop (as if preempted) after this step
  int64_t max_skipped_steps = 5;  // non-finite steps in a row before the run ends (exit 76)
  int64_t inject_nan_step = 0;    // testing only: poison this step's gradient (0 = never)
  int64_t inject_nan_count = 1;   // testing only: ... and this many steps after it in a row
  int inject_nan_rank = 0;        // testing only: on this world rank
  // Loss spikes (train/spike.h): what to do when a step's loss exceeds spike_factor x
  // the median of the last spike_window accepted losses or its gradient norm exceeds
  // spike_grad_norm.
  std::string spike_action = "warn";  // off|warn|skip|rollback
  double spike_factor = 3.0;          // 0 = no loss criterion
  int64_t spike_window = 100;
  double spike_grad_norm = 0;         // 0 = no gradient-norm criterion
  int spike_max_rollbacks = 3;        // rollbacks per process run before a spike ends it (exit 76)
  int64_t inject_spike_step = 0;      // testing only: poison the batch this step draws (0 = never)
  double inject_spike_scale = 100;    // testing only: ... by scaling its loss and gradient
};

struct ParallelConfig {
  int dp = 1;
  int tp = 1;
  int pp = 1;
  int zero = 0;  // 0 = replicated optimizer state, 1 = ZeRO-1 (sharded over dp)
  double bucket_mb = 25.0;  // gradient bucket size for the data-parallel reduction (MB)
  bool sequence_parallel = false;  // tp: shard norm/residual regions along the sequence
  std::string pp_schedule = "1f1b";  // gpipe|1f1b|interleaved
  int pp_chunks = 1;                 // model chunks (virtual stages) per pipeline rank (interleaved: >= 2)
  std::string pp_layers;             // layers per virtual stage, e.g. "3,3,2,2"; "" = even
  double comm_timeout_s = 300;     // watchdog: a collective or send/recv slower than this ends the job
};

struct BackendConfig {
  std::string device = "cpu";        // cpu|cuda
  std::string dtype = "fp32";        // fp32|bf16
  int threads = 0;                   // 0 = OMP_NUM_THREADS, else this rank's share of its cores
  double peak_gflops = 0;            // measured GEMM peak per process for MFU; 0 = not reported
  std::string matmul = "kumiko";     // kumiko|cublas (cublas: cuda only, reference path)
  std::string attention = "kumiko";  // kumiko|cudnn (cudnn: cuda only, reference path)
  std::string bf16_gemm = "auto";    // auto|emulated|openblas|onednn: the CPU's bf16 GEMM (cpu + bf16 only)
  bool packed_weights = true;        // cpu + bf16 + onednn: linear weights kept in oneDNN's packed layout
  std::string comm = "auto";         // auto|nccl|mpi: how cuda ranks exchange tensors (auto: nccl when each rank has its own GPU)
};

struct CheckpointConfig {
  std::string dir;          // "" = <log.run_dir>/checkpoints
  int64_t every_steps = 0;  // 0 = only at the end / on stop
  int keep_last = 3;        // 0 = keep all
  std::string resume;       // "" | auto | PATH
  int write_delay_ms = 0;   // testing only: pause after each tensor written (kill-during-save tests)
  bool async = true;        // write in a background thread from a snapshot; training goes on
  std::string writer = "auto";  // auto|parallel|gather: every rank writes its shards (MPI-IO) or rank 0 gathers
};

struct LogConfig {
  std::string run_dir = "runs/default";
  int64_t every_steps = 1;
  int64_t sample_every = 0;    // 0 = never
  std::string level = "info";  // trace|debug|info|warn|error|off
  bool all_ranks = false;
  bool tensorboard = true;            // rank 0 writes <run_dir>/tensorboard/ event files
  bool save_init_weights = false;     // write <run_dir>/weights_init.h5 before step 1
  int64_t straggler_every = 50;       // steps between straggler checks (0 = never)
  double straggler_threshold = 0.2;   // a rank this much slower than the median is named
};

struct Config {
  ModelConfig model;
  DataConfig data;
  TrainConfig train;
  ParallelConfig parallel;
  BackendConfig backend;
  CheckpointConfig checkpoint;
  LogConfig log;
  std::string source_file;             // the INI given with --config, "" if none
  std::vector<std::string> file_keys;  // "section.key" whose value came from source_file
};

// Adds `--config FILE` and one option per key (`--section.key`) to a subcommand (or a
// top-level app), and installs the INI reader. The file is applied once the app's
// arguments are parsed (this uses the app's parse_complete_callback: do not replace it);
// keys given on the command line keep their command-line value. `config` must outlive
// the parse.
void add_options(CLI::App& app, Config& config);

// After a successful parse: range and cross-field validation; throws kumiko::UserError
// (one line naming section.key, expected and actual, and the INI file when the value
// came from it).
void validate(const Config& config);

// Rewrites a CLI11 parse error into kumiko's one-line message naming the file and
// section.key (with a "did you mean" suggestion for unknown options).
std::string describe_parse_error(const CLI::ParseError& e, const Config& config);

// The effective configuration as INI text (every key, every section), readable back
// by add_options.
std::string to_ini(const Config& config);

// Every "section.key" name, in order (docs test uses it).
std::vector<std::string> all_keys();

// load_file / from_text (no command line): kumiko/config/load.h

// Number of trainable parameters the model described by `model` has (embeddings,
// attention, MLP, norms, untied head). An estimate for summaries and MFU: the model
// layer is the authority.
int64_t estimate_params(const ModelConfig& model);

// One line: arch, size, parameters, tokens per step, layout (for `kumiko config`).
std::string summary(const Config& config);

// The valid name nearest to `name` by edit distance, or "" when none is close.
std::string nearest_name(const std::string& name, const std::vector<std::string>& candidates);

}  // namespace kumiko::config
