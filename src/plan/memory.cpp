// kumiko plan, memory: each rank kind's bytes from the planning code of the model,
// the data-parallel layer and the pipeline runner, for the backend's element types.
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <mutex>
#include <sstream>
#include <thread>
#include <tuple>

#include "kernels/cpu/onednn/matmul_bf16_onednn.h"
#include "kumiko/core/bf16.h"
#include "kumiko/core/error.h"
#include "kumiko/core/threads.h"
#include "kumiko/model/parameters.h"
#include "kumiko/model/transformer.h"
#include "kumiko/ops/packed_weights.h"
#include "kumiko/parallel/data_parallel.h"
#include "kumiko/parallel/engine.h"
#include "kumiko/parallel/pipeline.h"
#include "kumiko/parallel/schedule.h"
#include "model/transformer_impl.h"
#include "plan/internal.h"

namespace kumiko::plan {

namespace {

// A backend's element types and where its parameters live, for planning only
// (BasicTransformer::plan_arena needs nothing else). The bf16 of the CUDA and CPU
// backends is two bytes like this stand-in; engine_cuda.cpp asserts the sizes agree.
template <typename A, typename G, bool Host>
struct Types {
  using Act = A;
  using Grad = G;
  using Stat = float;
  static constexpr bool kHost = Host;
};
using CpuTypes = Types<float, float, true>;
using CudaFp32 = Types<float, float, false>;
using Bf16Types = Types<uint16_t, float, false>;  // backend::Cuda<bf16> and backend::CpuBf16
static_assert(sizeof(bf16) == 2);

model::ArenaPlan arena_plan(const config::Config& cfg, const model::BufferLayout& l) {
  if (cfg.backend.dtype == "bf16") return model::BasicTransformer<Bf16Types>::plan_arena(l);
  if (cfg.backend.device != "cuda") return model::BasicTransformer<CpuTypes>::plan_arena(l);
  return model::BasicTransformer<CudaFp32>::plan_arena(l);
}

}  // namespace

// The scratchpad oneDNN's GEMMs share (kernels/cpu/onednn: kumiko's buffer, the
// largest any GEMM run needs), asked of oneDNN itself for every linear layer's three
// GEMMs at the layout's local shapes and the run's threads (oneDNN sizes it by them),
// each variant the model calls (with and without bias, bf16 or fp32 out, dx
// accumulated or not), chunked as the run would chunk it. Cached per shape and threads.
double onednn_scratchpad(const model::Dims& d, int64_t N, int tp, int threads) {
  static std::mutex mutex;
  static std::map<std::tuple<int64_t, int64_t, int64_t, int>, double> cache;
  const std::lock_guard<std::mutex> lock(mutex);
  struct Linear {
    int64_t in, out;
  };
  const Linear linears[] = {{d.C, d.qkv_width() / tp}, {d.Hq / tp * d.D, d.C}, {d.C, d.F / tp}, {d.F / tp, d.C},
                            {d.C, d.V / tp}};
  // oneDNN sizes by the threads OpenMP would give it: set for the queries, restored
  // however they end.
  struct Threads {
    int saved = omp_get_max_threads();
    ~Threads() { omp_set_num_threads(saved); }
  } restore;
  omp_set_num_threads(threads);
  double most = 0;
  for (const Linear& l : linears) {
    auto [it, fresh] = cache.try_emplace({N, l.in, l.out, threads}, 0.0);
    if (fresh) {
      size_t b = 0;
      for (bool bias : {false, true})
        for (bool bf16_out : {false, true})  // y = x W^T (+ b)
          b = std::max(b, cpu::onednn::chunking(false, true, N, l.out, l.in, l.in, l.in, l.out, bias, false, bf16_out)
                              .scratchpad);
      for (bool accumulate : {false, true})  // dx (+)= dy W
        b = std::max(b, cpu::onednn::chunking(false, false, N, l.in, l.out, l.out, l.in, l.in, false, accumulate, true)
                            .scratchpad);
      // dW += dy^T x
      b = std::max(b, cpu::onednn::chunking(true, false, l.out, l.in, N, l.out, l.in, l.in, false, true, false).scratchpad);
      it->second = static_cast<double>(b);
    }
    most = std::max(most, it->second);
  }
  return most;
}

namespace {

// backend::CpuBf16's fp32 scratch (include/kumiko/backend/cpu_bf16.h and the kernels
// it calls), each buffer kept at its largest size, for the bf16 GEMM the run uses
// (backend.bf16_gemm; `auto` as this CPU picks it: the plan is of this machine).
// [N, wide] is the widest activation (F, qkv or C, over tp). Every op but those below
// converts in its own loops or tiles (the GELU linear's GEMM stores bf16 like the others):
//   the vocab-shard embedding backward's widened dx [N, C] (slot 0, tp > 1 only; both
//     losses read bf16 logits as they are, the backward's one fp32 row per thread left
//     out with the other per-thread rows);
//   matmul_bf16_out's fp32 result before rounding (emulated / OpenBLAS; oneDNN writes
//     bf16 itself), the head's [N, V/tp] the largest;
//   the emulated GEMM's fp32 copies of its operands: the head's dlogits and a weight
//     (a shape oneDNN refuses takes the emulated GEMM and says so; left out);
//   oneDNN's scratchpad (onednn_scratchpad above).
//   attention backward's per-thread buffers, at most [N, Hq / tp, ...] over its threads:
//     fp32 dQ accumulators (D wide) and, on AVX512-BF16 CPUs, Q and dO as pair words
//     (D rounded up to 16 wide each; attention_dpbf16.cpp), or the forward's packed K
//     and V, [T, D / 2 + D rounded up to 16] words per thread, whichever is larger (each
//     is freed before the other is allocated).
double cpu_bf16_scratch(const model::Dims& d, int64_t B, int64_t T, int tp, cpu::Bf16Gemm gemm, int threads) {
  const double N = static_cast<double>(B * T);
  const double act = N * static_cast<double>(std::max({d.F, d.qkv_width(), d.C})) / tp;
  const double logits = N * static_cast<double>(d.V) / tp;
  const double weight = static_cast<double>(std::max({d.V / tp, d.F / tp, d.qkv_width() / tp})) * d.C;
  const double slot0 = tp > 1 ? N * static_cast<double>(d.C) : 0.0;
  const double ldd = static_cast<double>((d.D + 15) / 16 * 16);
  const double dq = N * static_cast<double>(d.Hq) / tp * (static_cast<double>(d.D) + 2 * ldd);
  const double kv = static_cast<double>(threads) * static_cast<double>((T + 63) / 64 * 64) * (d.D / 2 + ldd);
  const double fp32_result = gemm == cpu::Bf16Gemm::onednn ? 0.0 : std::max(logits, act);
  const double operand_copies = gemm == cpu::Bf16Gemm::emulated ? std::max(logits, act) + weight : 0.0;
  const double onednn = gemm == cpu::Bf16Gemm::onednn ? onednn_scratchpad(d, B * T, tp, threads) : 0.0;
  return 4.0 * (slot0 + fp32_result + operand_copies + std::max(dq, kv)) + onednn;
}

// backend.packed_weights (cpu bf16 with the oneDNN GEMM): cpu::PackedWeights'
// two packed bf16 copies of every weight the rank's linears multiply (the blocks' 2-D
// weights, and the head: the token embedding where tied, on the stage with the head),
// their sizes asked of oneDNN per shape (padded to its blocks). Cached per shape.
double packed_weight_bytes(const config::Config& cfg, const std::vector<model::ParameterSpec>& specs,
                           const model::Dims& d, const model::PipelineStage& stage, int64_t N) {
  if (!cpu_packs_weights(cfg)) return 0;
  static std::mutex mutex;
  static std::map<std::tuple<int64_t, int64_t, int64_t>, size_t> cache;
  const std::lock_guard<std::mutex> lock(mutex);
  double bytes = 0;
  for (const auto& s : specs) {
    const auto shape = s.local_shape();
    const bool head = s.name == "head.weight" || (s.name == "embed.tokens.weight" && d.tied && stage.has_head);
    if (shape.size() != 2 || !(head || s.name.rfind("blocks.", 0) == 0)) continue;
    auto [it, fresh] = cache.try_emplace({N, shape[1], shape[0]}, 0);
    if (fresh) it->second = cpu::PackedWeights::bytes_for(N, shape[1], shape[0]);
    bytes += static_cast<double>(it->second);
  }
  return bytes;
}

// The CUDA backend's workspace beyond the arena (backend prepare()): the largest of
// the norms', bias and attention backward scratch and the gradient-norm partials.
// The kernels' own size functions need the CUDA build; these are their formulas.
double cuda_workspace(const model::Dims& d, int64_t B, int64_t T, int tp, int64_t params) {
  const double N = static_cast<double>(B * T);
  double ws = 0;
  ws = std::max(ws, 2.0 * 4 * N);                                   // norm backward partial sums per row
  const double cols = static_cast<double>(std::max({d.C, d.qkv_width() / tp, d.F / tp}));
  ws = std::max(ws, 4.0 * 256 * cols);                               // bias backward: 256 row-blocks x cols
  ws = std::max(ws, 4.0 * static_cast<double>(B * (d.Hq / tp) * T));  // attention backward: rowsum(dO o O)
  ws = std::max(ws, 8.0 * std::max<double>(1024, static_cast<double>(params) / 65536));
  return ws + 32.0 * 1024 * 1024;  // cuBLASLt workspace
}

}  // namespace

bool cpu_packs_weights(const config::Config& cfg) {
  return cfg.backend.device == "cpu" && cfg.backend.dtype == "bf16" && cfg.backend.packed_weights &&
         parallel::bf16_gemm_of(&cfg) == cpu::Bf16Gemm::onednn && cpu::PackedWeights::supported();
}

int cpu_threads(const config::Config& cfg, const Layout& l) {
  return planned_threads(cfg.backend.threads, static_cast<int>(std::thread::hardware_concurrency()), l.ranks());
}

double cpu_gemm_scratchpad(const config::Config& cfg) {
  if (cfg.backend.device == "cuda" || cfg.backend.dtype != "bf16" ||
      parallel::bf16_gemm_of(&cfg) != cpu::Bf16Gemm::onednn)
    return 0;
  const Layout l = layout_of(cfg);
  return onednn_scratchpad(l.dims, int64_t{l.MB} * l.T, l.tp, cpu_threads(cfg, l));
}

Layout layout_of(const config::Config& cfg) {
  Layout l;
  l.dims = model::Dims::from(cfg.model);
  l.dp = cfg.parallel.dp;
  l.tp = cfg.parallel.tp;
  l.pp = cfg.parallel.pp;
  l.MB = cfg.train.micro_batch;
  l.T = cfg.data.seq_len;
  KUMIKO_USER_CHECK(l.MB > 0 && cfg.train.global_batch % (int64_t{l.MB} * l.dp) == 0,
                    "train.global_batch = ", cfg.train.global_batch, " must be a multiple of train.micro_batch x ",
                    "parallel.dp = ", int64_t{l.MB} * l.dp);
  l.m = static_cast<int>(cfg.train.global_batch / (int64_t{l.MB} * l.dp));
  l.chunks = l.pp > 1 ? cfg.parallel.pp_chunks : 1;
  l.kind = parallel::parse_schedule(cfg.parallel.pp_schedule);
  l.sp = cfg.parallel.sequence_parallel && l.tp > 1;
  l.recompute = model::parse_recompute(cfg.train.recompute);
  std::stringstream in(cfg.parallel.pp_layers);
  for (std::string item; std::getline(in, item, ',');) l.stage_layers.push_back(std::stoll(item));
  const auto& d = l.dims;
  KUMIKO_USER_CHECK(d.Hq % l.tp == 0 && d.Hkv % l.tp == 0 && d.F % l.tp == 0 && d.V % l.tp == 0,
                    "parallel.tp = ", l.tp, " must divide model.n_heads (", d.Hq, "), the kv heads (", d.Hkv,
                    "), the MLP width (", d.F, ") and model.vocab_size (", d.V, ")");
  KUMIKO_USER_CHECK(l.stage_layers.size() > 0 || d.L % (l.pp * l.chunks) == 0, "model.n_layers = ", d.L,
                    " must divide into parallel.pp x parallel.pp_chunks = ", l.pp * l.chunks, " equal stages");
  KUMIKO_USER_CHECK(!l.sp || (int64_t{l.MB} * l.T) % l.tp == 0, "parallel.sequence_parallel: micro_batch x seq_len",
                    " must be divisible by parallel.tp");
  if (l.pp > 1) parallel::validate_schedule(l.kind, l.pp, l.m, l.chunks);
  return l;
}

model::PipelineStage stage_of(const Layout& l, int pp_rank) {
  if (l.pp == 1) return {};
  const int slots = parallel::activation_slots(parallel::build_schedule(l.kind, l.pp, pp_rank, l.m, l.chunks), l.m,
                                               l.chunks);
  return model::pipeline_stage(l.dims, l.pp, l.chunks, pp_rank, l.stage_layers, slots);
}

Memory rank_memory(const config::Config& cfg, const Layout& l, int pp_rank) {
  Memory m;
  m.pp_rank = pp_rank;
  m.rank_kind = l.pp == 1 ? "all" : pp_rank == 0 ? "first" : pp_rank == l.pp - 1 ? "last" : "middle";
  const bool device = cfg.backend.device == "cuda";
  const bool bf16 = cfg.backend.dtype == "bf16";
  const double act_bytes = bf16 ? 2.0 : 4.0;
  model::BufferLayout b;
  b.dims = l.dims;
  b.batch = l.MB;
  b.seq_len = l.T;
  b.tp = l.tp;
  b.sequence_parallel = l.sp;
  b.stage = stage_of(l, pp_rank);
  b.recompute = l.recompute;
  const model::ArenaPlan a = arena_plan(cfg, b);
  m.slots = b.stage.chunks.empty() ? 1 : b.stage.slots;
  for (auto mode : {model::Recompute::none, model::Recompute::selective, model::Recompute::full}) {
    model::BufferLayout one = b;
    one.stage.slots = 1;
    one.recompute = mode;
    const double per = static_cast<double>(arena_plan(cfg, one).per_slot);
    (mode == model::Recompute::none       ? m.per_microbatch_none
     : mode == model::Recompute::selective ? m.per_microbatch_selective
                                           : m.per_microbatch_full) = per;
  }
  // The flat parameter layout of this rank (ParameterStore) and the optimizer state.
  const auto specs = model::parameter_specs(l.dims, l.tp, 0, b.stage.chunks.empty() ? nullptr : &b.stage);
  int64_t P = 0;
  const auto offsets = model::flat_offsets<float>(specs, &P);
  std::vector<int64_t> numel;
  for (const auto& s : specs) numel.push_back(numel_of(s.local_shape()));
  const int64_t opt = parallel::DataParallel::optimizer_elements(
      offsets, numel, P, cfg.parallel.zero, static_cast<int64_t>(cfg.parallel.bucket_mb * 1e6), l.dp, 0);
  m.optimizer = 4.0 * static_cast<double>(opt);
  m.arena = static_cast<double>(a.total);
  m.activations = static_cast<double>(a.activations);
  m.workspace = static_cast<double>(a.workspace);
  if (device || bf16) {  // master weights, working copy and gradients in the arena
    m.parameters = static_cast<double>(a.parameters);
    m.gradients = static_cast<double>(a.gradients);
  }
  if (device) {
    m.host_mirror = 8.0 * static_cast<double>(P);  // params(), host memory beside the GPU's
    m.workspace += cuda_workspace(l.dims, l.MB, l.T, l.tp, P);
    // CUDA context, cuBLAS/cuDNN handles and (several ranks) NCCL's buffers: an
    // estimate, docs/plan.md.
    m.runtime = (1.0 + (l.dp * l.tp * l.pp > 1 ? 0.5 : 0.0)) * 1024 * 1024 * 1024;
  } else {
    const int threads = cpu_threads(cfg, l);
    if (bf16) {
      m.workspace += cpu_bf16_scratch(l.dims, l.MB, l.T, l.tp, parallel::bf16_gemm_of(&cfg), threads);
      // params()' fp32 values and gradients (the host layout checkpoints and the
      // communicator read) beside the arena's: host memory too on the CPU.
      m.parameters += 4.0 * static_cast<double>(P);
      m.parameters += packed_weight_bytes(cfg, specs, l.dims, b.stage, int64_t{l.MB} * l.T);
      m.gradients += 4.0 * static_cast<double>(P);
    } else {
      m.parameters = 4.0 * static_cast<double>(P);
      m.gradients = 4.0 * static_cast<double>(P) + static_cast<double>(a.gradients);
    }
    // Buffers others allocate after start-up (an estimate measured on the validation
    // machine, docs/plan.md): OpenBLAS's and OpenMP's per-thread GEMM buffers, and
    // with several ranks Open MPI's reduction scratch and shared-memory segments.
    m.runtime = (6.0 * threads + (l.ranks() > 1 ? 6.0 : 0.0) + (l.dp > 1 ? 14.0 : 0.0)) * 1024 * 1024;
  }
  if (l.pp > 1) {
    const int64_t rows = l.sp ? int64_t{l.MB} * l.T / l.tp : int64_t{l.MB} * l.T;
    const int64_t elems = parallel::pipeline_buffer_elements(l.chunks, l.m, rows, l.dims.C);
    m.pipeline = act_bytes * static_cast<double>(elems);
    const double ids = 8.0 * l.m * l.MB * l.T;  // the step's token ids and targets, host vectors
    (device ? m.host_mirror : m.pipeline) += ids;
  }
  return m;
}

Memory rank_memory(const config::Config& cfg, int pp_rank) { return rank_memory(cfg, layout_of(cfg), pp_rank); }

std::vector<Memory> plan_memory(const config::Config& cfg, const Layout& l) {
  std::vector<Memory> out;
  if (l.pp == 1) {
    out.push_back(rank_memory(cfg, l, 0));
    return out;
  }
  out.push_back(rank_memory(cfg, l, 0));
  if (l.pp > 2) out.push_back(rank_memory(cfg, l, 1));
  out.push_back(rank_memory(cfg, l, l.pp - 1));
  return out;
}

}  // namespace kumiko::plan
