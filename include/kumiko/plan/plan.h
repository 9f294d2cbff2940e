#pragma once
// kumiko plan: the memory and step time of a training layout before it runs.
//
// Memory comes from the code that allocates it: the model's arena plan
// (BasicTransformer::plan_arena), the data-parallel layer's bucket plan
// (BasicDataParallel::optimizer_elements) and the pipeline runner's buffers, for the
// backend's element types. Step time is a model: FLOPs and bytes of each layer's ops
// at a device's sustained rates, tensor- and pipeline-parallel transfers and the
// data-parallel reduction over the network, the pipeline schedule replayed by the
// schedule simulator (parallel/schedule.h). docs/plan.md explains every term.
#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "kumiko/config/config.h"

namespace kumiko::plan {

// One device (a GPU, or one CPU process with its threads) and its links.
struct Device {
  std::string name;              // h100, h200, a100, cpu
  std::string source;            // where the numbers come from
  double memory = 0;             // bytes a rank may use
  double peak_flops = 0;         // dense peak of the training dtype (MFU denominator)
  double matmul_flops = 0;       // sustained GEMM rate
  double attention_flops = 0;    // sustained attention rate (forward; backward costs 2.5x)
  double memory_bw = 0;          // bytes/s for memory-bound ops
  // CPUs: one layer's forward + backward (with the layout's recomputation), and the
  // rest of a whole-model micro-batch (embedding, head, loss), timed on this
  // machine at the layout's local shapes; AdamW seconds per element. 0 = use the
  // rates above (GPUs).
  double layer_s = 0, head_s = 0, adamw_s = 0;
  double intra_bw = 0, intra_lat = 0;  // within a node: bytes/s per rank, seconds
  double inter_bw = 0, inter_lat = 0;  // between nodes
};

// Known accelerators (datasheet peaks times documented sustained fractions) for
// `dtype` (fp32|bf16). UserError for an unknown name.
Device known_device(const std::string& name, const std::string& dtype);
// This machine's CPU for `threads` threads per rank: rates measured with kumiko's
// own kernels on the model's shapes (cached under `cache_dir`, measured when absent
// or when `remeasure`), memory from the system.
Device measured_cpu(const config::Config& cfg, int threads, const std::string& cache_dir, bool remeasure);
std::string default_cache_dir();  // $KUMIKO_CACHE_DIR, else ~/.cache/kumiko

struct Cluster {
  int nodes = 1;
  int ranks_per_node = 1;  // GPUs per node, or MPI ranks per node on CPUs
  int cores_per_node = 0;  // CPUs: cores shared by the node's ranks (0 = not oversubscribed)
  Device device;
  // CPUs: the device for a layout's own shapes (measured rates differ with the GEMM
  // sizes); empty = `device` for every layout.
  std::function<Device(const config::Config&)> device_for;
};

// Bytes of one rank (device memory on a GPU, host memory on the CPU).
struct Memory {
  std::string rank_kind;  // "all", or the pipeline stage: first, middle, last
  int pp_rank = 0;
  double parameters = 0, gradients = 0, optimizer = 0, activations = 0, pipeline = 0, workspace = 0, runtime = 0;
  double host_mirror = 0;  // device backends: host memory (parameter and gradient copies, pipeline token ids)
  double arena = 0;        // the model's arena (part of the above), what the backend allocates at start
  int slots = 1;           // micro-batches in flight per chunk
  // Activations kept per micro-batch (all of this rank's layers) for each mode.
  double per_microbatch_none = 0, per_microbatch_selective = 0, per_microbatch_full = 0;
  double total() const { return parameters + gradients + optimizer + activations + pipeline + workspace + runtime; }
  // Kumiko's own allocations (total less the runtime estimate).
  double allocated() const { return total() - runtime; }
  // The largest term's name ("activations", "optimizer state", ...) and bytes.
  std::pair<std::string, double> largest() const;
};

struct StepTime {
  double compute = 0;     // forward + backward (+ recomputation) of all micro-batches, slowest stage
  double recompute = 0;   // of which recomputation
  double tp_comm = 0;     // tensor/sequence-parallel collectives (not overlapped)
  double pp_comm = 0;     // activation and gradient transfers between stages
  double bubble = 0;      // pipeline idle time
  double dp_comm = 0;     // the data-parallel reduction (and ZeRO-1 all-gather) not hidden by backward
  double optimizer = 0;   // AdamW, gradient norm, zeroing
  double step = 0;        // the sum
  double tokens_per_s = 0;
  double mfu = 0;         // model FLOPs (PaLM: 6N + 12 L H D T per token) / (ranks x peak)
};

struct Plan {
  std::string layout;            // e.g. "dp2 tp2 pp2 1f1b zero1 sp mb1 recompute=full"
  int ranks = 1;
  std::vector<Memory> memory;    // per rank kind
  StepTime time;
  double peak_memory() const;    // the largest rank's total
  std::string largest_term;      // e.g. "activations" (of the largest rank)
  double capacity = 0;           // bytes one rank may use (the device's, or the node's share)
  bool fits = true;              // peak <= capacity
  bool over_90 = false;          // peak > 90 % of capacity
};

// The memory of pipeline rank `pp_rank` of cfg's layout (every dp and tp rank of a
// stage holds the same): the trainer's pre-flight check, before any allocation.
Memory rank_memory(const config::Config& cfg, int pp_rank);
// Of a CPU bf16 rank's workspace, oneDNN's GEMM scratchpad at the run's threads (0
// unless backend.bf16_gemm resolves to onednn).
double cpu_gemm_scratchpad(const config::Config& cfg);

// The CPU's measured GEMM peak (GFLOP/s) of `dtype` (fp32: sgemm; bf16: the fastest
// bf16 GEMM) at `threads` threads saved by kumiko bench gemm in the cache (0 when
// none), and saving it.
double cached_cpu_peak_gflops(int threads, const std::string& cache_dir, const std::string& dtype = "fp32");
void save_cpu_peak_gflops(int threads, double gflops, const std::string& cache_dir, const std::string& dtype = "fp32");
// The datasheet peak (FLOP/s) of a GPU named by the driver (e.g. "NVIDIA H100 80GB
// HBM3") for dtype: A100, H100 SXM and H200; 0 for others (H100 PCIe and NVL too).
double gpu_peak_flops(const std::string& device_name, const std::string& dtype);

// The plan of cfg's layout (parallel.*, train.*, backend.dtype) on `cluster`.
// Throws UserError when the layout is invalid for the model or the cluster.
Plan make_plan(const config::Config& cfg, const Cluster& cluster);

// Every valid layout of cluster.nodes x ranks_per_node ranks (dp x tp x pp with tp
// within a node, schedules, chunks, zero, sequence parallelism, micro-batch,
// recomputation) ranked by predicted tokens/s, the ones that fit first.
std::vector<std::pair<config::Config, Plan>> sweep(const config::Config& cfg, const Cluster& cluster);

// The cheapest change that makes cfg fit `cluster`'s memory (a sentence naming the
// config keys), or "" when none of the tried changes fits. With device rates the
// fitting change with the best predicted throughput; without (device.matmul_flops
// = 0) the first that fits of: ZeRO-1, sequence parallelism, selective
// recomputation, a smaller micro-batch, full recomputation, more pipeline stages.
std::string cheapest_fix(const config::Config& cfg, const Cluster& cluster);

// Human-readable report of one plan (tables), and one sweep as markdown or CSV.
std::string describe(const config::Config& cfg, const Cluster& cluster, const Plan& plan);
std::string to_json(const Plan& plan);  // every term, bytes and seconds (kumiko plan --format json)
std::string sweep_table(const std::vector<std::pair<config::Config, Plan>>& rows, bool csv);

}  // namespace kumiko::plan
