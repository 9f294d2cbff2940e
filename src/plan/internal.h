#pragma once
// The planner's parts shared between its files (memory.cpp, time.cpp, device.cpp,
// report.cpp).
#include <string>
#include <vector>

#include "kumiko/config/config.h"
#include "kumiko/model/transformer.h"
#include "kumiko/parallel/schedule.h"
#include "kumiko/plan/plan.h"

namespace kumiko::plan {

// A config's layout, resolved and checked (UserError naming the key otherwise).
struct Layout {
  model::Dims dims;
  int dp = 1, tp = 1, pp = 1, chunks = 1, MB = 1, T = 1;
  int m = 1;  // micro-batches per step per dp rank
  parallel::ScheduleKind kind = parallel::ScheduleKind::one_f_one_b;
  bool sp = false;
  model::Recompute recompute = model::Recompute::none;
  std::vector<int64_t> stage_layers;
  int ranks() const { return dp * tp * pp; }
};
Layout layout_of(const config::Config& cfg);
model::PipelineStage stage_of(const Layout& l, int pp_rank);
Memory rank_memory(const config::Config& cfg, const Layout& l, int pp_rank);
// A CPU rank's OpenMP threads (backend.threads, else the cores shared by the ranks).
int cpu_threads(const config::Config& cfg, const Layout& l);
// Bytes of oneDNN's shared GEMM scratchpad for these local shapes (N tokens per
// micro-batch) at `threads` threads: the largest over the linear layers' GEMMs.
double onednn_scratchpad(const model::Dims& d, int64_t N, int tp, int threads);
std::vector<Memory> plan_memory(const config::Config& cfg, const Layout& l);
// Whether a CPU bf16 run keeps its linear weights packed (backend.packed_weights with
// oneDNN's GEMM where PackedWeights::supported(): what backend::CpuBf16 decides).
bool cpu_packs_weights(const config::Config& cfg);

// Work of one micro-batch on one pipeline rank (all its chunks).
struct Work {
  double mm_flops = 0;    // GEMMs, forward + backward (+ recomputed forward)
  double att_flops = 0;   // attention, forward-equivalent FLOPs (backward counted as 2.5 forwards)
  double bytes = 0;       // memory-bound ops
  double recompute_mm = 0, recompute_att = 0, recompute_bytes = 0;  // of which recomputation
  double tp_bytes = 0;    // bytes each rank sends in tp collectives (ring algorithms)
  int tp_collectives = 0; // their count (latency)
  double pp_bytes = 0;    // activation + gradient bytes sent to neighbours
  int pp_messages = 0;
};
Work stage_work(const Layout& l, const model::PipelineStage& stage, double act_bytes);
StepTime step_time(const config::Config& cfg, const Layout& l, const Cluster& c);

}  // namespace kumiko::plan
