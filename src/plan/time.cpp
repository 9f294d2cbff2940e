// kumiko plan, step time: the work of each op of a micro-batch at the device's
// sustained rates, communication over the links, the pipeline schedule replayed by
// the schedule simulator. docs/plan.md derives every term.
#include <algorithm>
#include <cmath>

#include "kumiko/core/error.h"
#include "kumiko/core/threads.h"
#include "kumiko/model/parameters.h"
#include "kumiko/parallel/schedule.h"
#include "plan/internal.h"

namespace kumiko::plan {

Work stage_work(const Layout& l, const model::PipelineStage& stage, double ab) {
  const model::Dims& d = l.dims;
  const int t = l.tp;
  const double N = static_cast<double>(l.MB) * l.T, Nr = l.sp ? N / t : N;  // tokens; residual rows
  const double C = static_cast<double>(d.C), F = static_cast<double>(d.F / t), W = static_cast<double>(d.qkv_width() / t);
  const double A = static_cast<double>(d.Hq / t * d.D), V = static_cast<double>(d.V / t);
  const double Hq = static_cast<double>(d.Hq / t), Hkv = static_cast<double>(d.Hkv / t), D = static_cast<double>(d.D);
  const double up = d.llama ? 2 : 1;  // up-projections (gate and up for SwiGLU)
  Work w;
  int64_t layers = 0;
  for (const auto& [a, b] : stage.chunks) layers += b - a;
  if (stage.chunks.empty()) layers = d.L;
  const double Lr = static_cast<double>(layers);

  // One layer. GEMMs: qkv, attention projection, MLP up-projection(s) and down.
  const double mm_fwd = 2 * N * (C * W + A * C + (up + 1) * C * F);
  // Causal attention: QK^T and PV over half of the T x T scores.
  const double att_fwd = 2.0 * l.MB * Hq * static_cast<double>(l.T) * l.T * D;
  // Memory-bound elements read and written (docs/plan.md): norms and residual adds
  // on the residual rows, activation function, RoPE, the backward's zeroing.
  const double act_fwd = d.llama ? 3 * F : 2 * F;
  const double rope = d.llama ? 2 * (Hq + Hkv) * D : 0;
  const double e_fwd = Nr * 10 * C + N * (act_fwd + rope);
  const double e_bwd = Nr * 14 * C + N * ((d.llama ? 7 : 4) * F + 2 * W + 2 * A + rope);
  w.mm_flops += Lr * 3 * mm_fwd;
  w.att_flops += Lr * 3.5 * att_fwd;
  w.bytes += Lr * (e_fwd + e_bwd) * ab;
  // Recomputation in backward: selective runs both norms and the activation again;
  // full runs the layer's forward up to the MLP activation (not the down-projection)
  // and the first norm once more (it shares its buffer with the second).
  if (l.recompute == model::Recompute::selective) {
    w.recompute_bytes = Lr * (Nr * 4 * C + N * act_fwd) * ab;
  } else if (l.recompute == model::Recompute::full) {
    w.recompute_mm = Lr * (mm_fwd - 2 * N * F * C);
    w.recompute_att = Lr * att_fwd;
    w.recompute_bytes = Lr * (e_fwd + Nr * 2 * C) * ab;
  }
  if (t > 1) {
    // Per layer: two row-parallel outputs forward, two input gradients backward, each
    // an all-reduce of N x C (2 (t-1)/t of it sent per rank), or with sequence
    // parallelism a reduce-scatter and an all-gather ((t-1)/t each).
    const double ring = (t - 1.0) / t;
    const double per_layer = 4 * 2 * ring * N * C * ab;
    const int count = l.sp ? 8 : 4;
    w.tp_bytes += Lr * per_layer;
    w.tp_collectives += static_cast<int>(layers) * count;
    // Recomputed collectives: the attention projection's (full); with sequence
    // parallelism the all-gathers of the recomputed norm outputs (two for selective,
    // the first norm's again for full).
    const double gather = ring * N * C * ab;
    if (l.recompute == model::Recompute::full) {
      w.tp_bytes += Lr * (per_layer / 4 + (l.sp ? gather : 0));
      w.tp_collectives += static_cast<int>(layers) * (count / 4 + (l.sp ? 1 : 0));
    } else if (l.recompute == model::Recompute::selective && l.sp) {
      w.tp_bytes += Lr * 2 * gather;
      w.tp_collectives += static_cast<int>(layers) * 2;
    }
  }
  const bool embed = stage.chunks.empty() || stage.has_embedding;
  const bool head = stage.chunks.empty() || stage.has_head;
  if (embed) {
    w.bytes += 3 * N * C * ab;  // lookup, positions, and the backward's scatter
    if (t > 1) {
      w.tp_bytes += 2 * (t - 1.0) / t * N * C * ab;
      w.tp_collectives += 1;
    }
  }
  if (head) {
    w.mm_flops += 3 * 2 * N * C * V;
    w.bytes += (Nr * 14 * C + N * 5 * V) * ab;  // final norm; cross-entropy's passes over the logits
    if (t > 1) {
      w.tp_bytes += 2 * (t - 1.0) / t * 3 * N * 4;
      w.tp_collectives += 2;
    }
  }
  w.mm_flops += w.recompute_mm;
  w.att_flops += w.recompute_att;
  w.bytes += w.recompute_bytes;
  if (l.pp > 1) {
    // Each chunk receives its input and sends its output (forward), and the reverse
    // in backward, except at the model's two ends.
    const double msg = Nr * C * ab;
    const int chunks = static_cast<int>(stage.chunks.size());
    const int ends = (stage.has_embedding ? 1 : 0) + (stage.has_head ? 1 : 0);
    const int links = 2 * chunks - ends;
    w.pp_bytes = 2.0 * links * msg;
    w.pp_messages = 2 * links;
  }
  return w;
}

namespace {
double transfer(double bytes, int messages, double bw, double lat) {
  return bw > 0 ? bytes / bw + messages * lat : 0;
}
}  // namespace

StepTime step_time(const config::Config& cfg, const Layout& l, const Cluster& c) {
  const Device& dev = c.device;
  KUMIKO_USER_CHECK(dev.matmul_flops > 0 && dev.memory_bw > 0, "kumiko plan: device '", dev.name,
                    "' has no rates to predict step time with");
  const bool device = cfg.backend.device == "cuda";
  const double ab = cfg.backend.dtype == "bf16" ? 2.0 : 4.0;  // activations (both backends store bf16)
  const int per_node = std::max(c.ranks_per_node, 1);
  // A CPU node with more threads than cores shares them.
  double share = 1;
  if (!device && c.cores_per_node > 0) {
    const int threads = planned_threads(cfg.backend.threads, c.cores_per_node, per_node);
    share = std::max(1.0, static_cast<double>(threads) * per_node / c.cores_per_node);
  }
  // Which links a group uses: tp is innermost in the rank order, then dp, then pp.
  const bool tp_inter = l.tp > per_node, dp_inter = l.tp * l.dp > per_node, pp_inter = l.ranks() > per_node;
  const double tp_bw = tp_inter ? dev.inter_bw : dev.intra_bw, tp_lat = tp_inter ? dev.inter_lat : dev.intra_lat;

  StepTime s;
  double tf = 0, tb = 0, recompute = 0, tp_comm = 0, pp_comm = 0;
  for (int r = 0; r < l.pp; ++r) {
    const model::PipelineStage stage = stage_of(l, r);
    const Work w = stage_work(l, stage, ab);
    double compute = share * (w.mm_flops / dev.matmul_flops + w.att_flops / dev.attention_flops +
                              w.bytes / dev.memory_bw);
    const double comm = transfer(w.tp_bytes, w.tp_collectives, tp_bw, tp_lat);
    const double rec = share * (w.recompute_mm / dev.matmul_flops + w.recompute_att / dev.attention_flops +
                                w.recompute_bytes / dev.memory_bw);
    if (dev.layer_s > 0) {
      // Timed on this machine: the stage's layers, and the head's share where it is.
      int64_t layers = 0;
      for (const auto& [a, b] : stage.chunks) layers += b - a;
      if (stage.chunks.empty()) layers = l.dims.L;
      const bool head = stage.chunks.empty() || stage.has_head;
      compute = share * (static_cast<double>(layers) * dev.layer_s + (head ? dev.head_s : 0.0));
    }
    // Forward is about a third of the non-recomputed work; recomputation runs in backward.
    const double fwd = (compute - rec) / 3 + comm / 2;
    const double bwd = compute - (compute - rec) / 3 + comm / 2;
    if (fwd + bwd > tf + tb) {
      tf = fwd;
      tb = bwd;
      recompute = rec;
      tp_comm = comm;
      pp_comm = transfer(w.pp_bytes, w.pp_messages, pp_inter ? dev.inter_bw : dev.intra_bw,
                         pp_inter ? dev.inter_lat : dev.intra_lat);
    }
  }
  const double ideal = l.m * (tf + tb);
  double span = ideal;
  if (l.pp > 1) span = parallel::simulate(l.kind, l.pp, l.m, l.chunks, tf, tb).makespan;
  s.compute = ideal - l.m * tp_comm;
  s.recompute = l.m * recompute;
  s.tp_comm = l.m * tp_comm;
  s.bubble = span - ideal;
  s.pp_comm = l.m * pp_comm;

  // Data parallelism and the optimizer, over the largest rank's parameters.
  int64_t P = 0;
  for (int r = 0; r < l.pp; ++r) {
    const model::PipelineStage stage = stage_of(l, r);
    const auto specs = model::parameter_specs(l.dims, l.tp, 0, stage.chunks.empty() ? nullptr : &stage);
    int64_t n = 0;
    model::flat_offsets<float>(specs, &n);
    P = std::max(P, n);
  }
  const double grad_bytes = 4.0 * static_cast<double>(P);
  const double dp_bw = dp_inter ? dev.inter_bw : dev.intra_bw, dp_lat = dp_inter ? dev.inter_lat : dev.intra_lat;
  const int buckets = std::max(1, static_cast<int>(grad_bytes / std::max(cfg.parallel.bucket_mb * 1e6, 1.0)));
  double reduce = 0, gather = 0;
  if (l.dp > 1) {
    const double ring = (l.dp - 1.0) / l.dp;
    if (cfg.parallel.zero == 1) {
      reduce = transfer(ring * grad_bytes, buckets, dp_bw, dp_lat);
      gather = transfer(ring * grad_bytes, buckets, dp_bw, dp_lat);  // updated parameters, after the step
    } else {
      reduce = transfer(2 * ring * grad_bytes, 2 * buckets, dp_bw, dp_lat);
    }
  }
  // The reduction overlaps the last micro-batch's backward (NCCL on its own stream;
  // MPI progresses only while the rank polls, about half of the time).
  // With pipeline parallelism the reduction starts after the pipeline step.
  const double overlap = l.pp > 1 ? 0.0 : device ? 0.9 : 0.5;
  s.dp_comm = std::max(0.0, reduce - overlap * tb) + gather;
  if (l.pp > 1 && l.dims.tied)  // the tied embedding's gradient between the first and last stage
    s.dp_comm += transfer(4.0 * l.dims.V / l.tp * l.dims.C, 1, pp_inter ? dev.inter_bw : dev.intra_bw,
                          pp_inter ? dev.inter_lat : dev.intra_lat);
  // AdamW reads parameters, gradients and both moments and writes three of them; the
  // gradient norm reads the gradients once more, and on a GPU zeroing writes them (the
  // CPU backends do not zero: the first weight-gradient GEMM of a step overwrites).
  const bool zero1 = cfg.parallel.zero == 1;
  const double opt_elems = zero1 ? static_cast<double>(P) / l.dp : static_cast<double>(P);
  const double norm_zero = device ? 8 : 4;
  if (dev.adamw_s > 0) {
    // Measured on this CPU per element, with packed weights packing them (34 B an
    // element). Under ZeRO-1 a shard's AdamW packs nothing (30 B), and in bf16 each rank
    // rounds its whole working copy again after the gather (4 B read, 2 written a
    // parameter), packing the weights in that pass (4 B more).
    const bool packs = cpu_packs_weights(cfg);
    const double adamw = zero1 && packs ? 30.0 / dev.memory_bw : dev.adamw_s;
    const double refresh = zero1 && ab == 2.0 ? static_cast<double>(P) * (packs ? 10.0 : 6.0) / dev.memory_bw : 0.0;
    s.optimizer = share * (opt_elems * adamw + refresh + static_cast<double>(P) * norm_zero / dev.memory_bw);
  } else {
    s.optimizer = share * (opt_elems * 28 + static_cast<double>(P) * (norm_zero + (ab == 2 ? 6 : 0))) / dev.memory_bw;
  }
  s.step = s.compute + s.tp_comm + s.bubble + s.pp_comm + s.dp_comm + s.optimizer;
  const double tokens = static_cast<double>(cfg.train.global_batch) * l.T;
  s.tokens_per_s = tokens / s.step;
  if (dev.peak_flops > 0)
    s.mfu = s.tokens_per_s * model::train_flops_per_token(l.dims, l.T) / (l.ranks() * dev.peak_flops);
  return s;
}

}  // namespace kumiko::plan
