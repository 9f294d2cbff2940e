// kumiko plan: one layout's plan, the sweep over layouts, the cheapest change that
// fits, and their reports.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <sstream>

#include <nlohmann/json.hpp>

#include "kumiko/core/error.h"
#include "kumiko/plan/plan.h"
#include "plan/internal.h"

namespace kumiko::plan {

namespace {
constexpr double kGiB = 1024.0 * 1024 * 1024;

std::string layout_name(const config::Config& c, const Layout& l) {
  std::string s = fmt::format("dp{} tp{} pp{}", l.dp, l.tp, l.pp);
  if (l.pp > 1) s += " " + c.parallel.pp_schedule + (l.chunks > 1 ? fmt::format("x{}", l.chunks) : "");
  if (l.dp > 1) s += fmt::format(" zero{}", c.parallel.zero);
  if (l.sp) s += " sp";
  s += fmt::format(" mb{}", l.MB);
  s += std::string(" recompute=") + model::recompute_name(l.recompute);
  return s;
}

}  // namespace

std::pair<std::string, double> Memory::largest() const {
  const std::pair<const char*, double> terms[] = {{"parameters", parameters},     {"gradients", gradients},
                                                  {"optimizer state", optimizer}, {"activations", activations},
                                                  {"pipeline buffers", pipeline}, {"workspace", workspace},
                                                  {"runtime", runtime}};
  auto best = terms[0];
  for (const auto& t : terms)
    if (t.second > best.second) best = t;
  return {best.first, best.second};
}

double Plan::peak_memory() const {
  double p = 0;
  for (const auto& m : memory) p = std::max(p, m.total());
  return p;
}

Plan make_plan(const config::Config& cfg, const Cluster& given) {
  const Layout l = layout_of(cfg);
  Cluster cluster = given;
  if (cluster.device_for) cluster.device = cluster.device_for(cfg);
  const int slots = cluster.nodes * cluster.ranks_per_node;
  KUMIKO_USER_CHECK(l.ranks() <= slots, "parallel.dp x parallel.tp x parallel.pp = ", l.ranks(),
                    " ranks do not fit --nodes ", cluster.nodes, " x ", cluster.ranks_per_node, " ranks per node");
  Plan p;
  p.layout = layout_name(cfg, l);
  p.ranks = l.ranks();
  p.memory = plan_memory(cfg, l);
  p.time = step_time(cfg, l, cluster);
  const bool device = cfg.backend.device == "cuda";
  p.capacity = device ? cluster.device.memory : cluster.device.memory / std::max(cluster.ranks_per_node, 1);
  const double peak = p.peak_memory();
  p.fits = peak <= p.capacity;
  p.over_90 = peak > 0.9 * p.capacity;
  const Memory* big = &p.memory[0];
  for (const auto& m : p.memory)
    if (m.total() > big->total()) big = &m;
  p.largest_term = big->largest().first;
  return p;
}

std::vector<std::pair<config::Config, Plan>> sweep(const config::Config& cfg, const Cluster& cluster) {
  const int R = cluster.nodes * cluster.ranks_per_node;
  const model::Dims d = model::Dims::from(cfg.model);
  std::vector<std::pair<config::Config, Plan>> out;
  for (int tp = 1; tp <= cluster.ranks_per_node; tp *= 2) {
    if (R % tp) continue;
    for (int pp = 1; pp <= R / tp; ++pp) {
      if ((R / tp) % pp || d.L % pp) continue;
      const int dp = R / (tp * pp);
      if (cfg.train.global_batch % dp) continue;
      for (int mb = 1; mb <= cfg.train.global_batch / dp; mb *= 2) {
        if ((cfg.train.global_batch / dp) % mb) continue;
        for (const char* sched : {"1f1b", "interleaved"}) {
          if (pp == 1 && std::string(sched) != "1f1b") continue;
          for (int zero = 0; zero <= (dp > 1 ? 1 : 0); ++zero)
            for (int sp = 0; sp <= (tp > 1 ? 1 : 0); ++sp)
              for (const char* rc : {"none", "selective", "full"}) {
                config::Config c = cfg;
                c.parallel.dp = dp;
                c.parallel.tp = tp;
                c.parallel.pp = pp;
                c.parallel.pp_schedule = sched;
                c.parallel.pp_chunks = std::string(sched) == "interleaved" ? 2 : 1;
                c.parallel.pp_layers.clear();
                c.parallel.zero = zero;
                c.parallel.sequence_parallel = sp != 0;
                c.train.micro_batch = mb;
                c.train.recompute = rc;
                try {
                  Cluster cl = cluster;
                  out.emplace_back(c, make_plan(c, cl));
                } catch (const UserError&) {
                  // not a valid layout for this model (divisibility, schedule)
                }
              }
        }
      }
    }
  }
  std::stable_sort(out.begin(), out.end(), [](const auto& a, const auto& b) {
    if (a.second.fits != b.second.fits) return a.second.fits;
    if (a.second.over_90 != b.second.over_90) return !a.second.over_90;
    return a.second.time.tokens_per_s > b.second.time.tokens_per_s;
  });
  return out;
}

std::string cheapest_fix(const config::Config& cfg, const Cluster& cluster) {
  // Candidates, each one change away from cfg; the fitting one with the highest
  // predicted throughput wins.
  std::vector<std::pair<std::string, config::Config>> tries;
  auto add = [&](const std::string& what, auto&& change) {
    config::Config c = cfg;
    change(c);
    tries.emplace_back(what, c);
  };
  if (cfg.parallel.dp > 1 && cfg.parallel.zero == 0) add("parallel.zero = 1", [](auto& c) { c.parallel.zero = 1; });
  if (cfg.parallel.tp > 1 && !cfg.parallel.sequence_parallel)
    add("parallel.sequence_parallel = true", [](auto& c) { c.parallel.sequence_parallel = true; });
  if (cfg.train.recompute == "none")
    add("train.recompute = selective", [](auto& c) { c.train.recompute = "selective"; });
  if (cfg.train.recompute != "full") add("train.recompute = full", [](auto& c) { c.train.recompute = "full"; });
  for (int mb = cfg.train.micro_batch / 2; mb >= 1; mb /= 2)
    add(fmt::format("train.micro_batch = {}", mb), [mb](auto& c) { c.train.micro_batch = mb; });
  for (int f = 2; f <= 8; f *= 2)
    if (cfg.parallel.dp % f == 0)
      add(fmt::format("parallel.pp = {} (parallel.dp = {})", cfg.parallel.pp * f, cfg.parallel.dp / f), [f](auto& c) {
        c.parallel.pp *= f;
        c.parallel.dp /= f;
        c.parallel.pp_layers.clear();
        if (c.parallel.pp_schedule == "interleaved" && c.parallel.pp_chunks < 2) c.parallel.pp_chunks = 2;
      });
  const bool timed = cluster.device.matmul_flops > 0 || cluster.device_for;
  if (!timed) {
    // Memory only, in the order of what the change usually costs in step time.
    auto rank = [](const std::string& w) {
      const char* order[] = {"parallel.zero", "parallel.sequence", "train.recompute = selective", "train.micro_batch",
                             "train.recompute = full", "parallel.pp"};
      for (int i = 0; i < 6; ++i)
        if (w.rfind(order[i], 0) == 0) return i;
      return 6;
    };
    std::stable_sort(tries.begin(), tries.end(), [&](const auto& a, const auto& b) { return rank(a.first) < rank(b.first); });
    for (const auto& [what, c] : tries) {
      try {
        const Layout l = layout_of(c);
        double peak = 0;
        for (const auto& m : plan_memory(c, l)) peak = std::max(peak, m.total());
        const double cap = c.backend.device == "cuda" ? cluster.device.memory
                                                      : cluster.device.memory / std::max(cluster.ranks_per_node, 1);
        if (peak <= cap) return fmt::format("{} (peak {:.2f} GiB per rank)", what, peak / kGiB);
      } catch (const UserError&) {
      }
    }
    return "";
  }
  std::string best;
  double best_tps = -1;
  for (const auto& [what, c] : tries) {
    try {
      const Plan p = make_plan(c, cluster);
      if (p.fits && p.time.tokens_per_s > best_tps) {
        best_tps = p.time.tokens_per_s;
        best = fmt::format("{} (peak {:.2f} GiB per rank, predicted {:.0f} tokens/s)", what, p.peak_memory() / kGiB,
                           p.time.tokens_per_s);
      }
    } catch (const UserError&) {
    }
  }
  return best;
}

std::string describe(const config::Config& cfg, const Cluster& cluster, const Plan& p) {
  const model::Dims d = model::Dims::from(cfg.model);
  const Device dev = cluster.device_for ? cluster.device_for(cfg) : cluster.device;
  std::ostringstream o;
  o << fmt::format("kumiko plan: {} L{} C{} heads {}/{} F{} V{}, seq {} x global batch {}, {} {}\n", cfg.model.arch,
                   d.L, d.C, d.Hq, d.Hkv, d.F, d.V, cfg.data.seq_len, cfg.train.global_batch, cfg.backend.device,
                   cfg.backend.dtype);
  o << fmt::format("cluster: {} node(s) x {} rank(s) of {} ({})\n", cluster.nodes, cluster.ranks_per_node,
                   dev.name, dev.source);
  o << fmt::format("rates:   GEMM {:.1f} GFLOP/s, attention {:.1f} GFLOP/s, memory {:.1f} GB/s, peak {:.1f} GFLOP/s; "
                   "links {:.0f} GB/s {:.0f} us within a node, {:.0f} GB/s {:.0f} us between nodes\n",
                   dev.matmul_flops / 1e9, dev.attention_flops / 1e9, dev.memory_bw / 1e9, dev.peak_flops / 1e9,
                   dev.intra_bw / 1e9, dev.intra_lat * 1e6, dev.inter_bw / 1e9, dev.inter_lat * 1e6);
  o << fmt::format("layout:  {} ({} ranks)\n\n", p.layout, p.ranks);
  o << fmt::format("{:<44}", "memory per rank (MiB)");
  for (const auto& m : p.memory) o << fmt::format("{:>12}", m.rank_kind);
  o << "\n";
  auto row = [&](const std::string& name, auto&& get) {
    o << fmt::format("  {:<42}", name);
    for (const auto& m : p.memory) o << fmt::format("{:>12.1f}", get(m) / 1048576.0);
    o << "\n";
  };
  row("parameters", [](const Memory& m) { return m.parameters; });
  row("gradients", [](const Memory& m) { return m.gradients; });
  row(fmt::format("optimizer state (AdamW m, v; zero={})", cfg.parallel.zero), [](const Memory& m) { return m.optimizer; });
  row(std::string("activations (recompute=") + cfg.train.recompute + ", all in flight)",
      [](const Memory& m) { return m.activations; });
  row("pipeline send/receive buffers", [](const Memory& m) { return m.pipeline; });
  row("workspace (shared scratch)", [](const Memory& m) { return m.workspace; });
  row(cfg.backend.device == "cuda" ? "runtime (CUDA context, NCCL; estimate)" : "runtime (BLAS, OpenMP, MPI; estimate)",
      [](const Memory& m) { return m.runtime; });
  row("total", [](const Memory& m) { return m.total(); });
  o << fmt::format("  {:<42}", "micro-batches in flight per chunk");
  for (const auto& m : p.memory) o << fmt::format("{:>12}", m.slots);
  o << "\n";
  row("activations per micro-batch, recompute=none", [](const Memory& m) { return m.per_microbatch_none; });
  row("                              selective", [](const Memory& m) { return m.per_microbatch_selective; });
  row("                              full", [](const Memory& m) { return m.per_microbatch_full; });
  if (cfg.backend.device == "cuda") row("host memory (parameter mirror, token ids)", [](const Memory& m) { return m.host_mirror; });
  o << fmt::format("  {:<42}{:>12.1f} MiB per rank{}\n", "capacity", p.capacity / 1048576.0,
                   p.fits ? (p.over_90 ? " (over 90 % used)" : "") : "  DOES NOT FIT");
  o << fmt::format("  largest term: {}\n\n", p.largest_term);
  const StepTime& t = p.time;
  o << "step time (ms)\n";
  o << fmt::format("  {:<42}{:>12.2f}\n", "forward + backward", 1e3 * t.compute);
  o << fmt::format("  {:<42}{:>12.2f}\n", "  of which recomputation", 1e3 * t.recompute);
  o << fmt::format("  {:<42}{:>12.2f}\n", "tensor-parallel collectives", 1e3 * t.tp_comm);
  o << fmt::format("  {:<42}{:>12.2f}\n", "pipeline transfers", 1e3 * t.pp_comm);
  o << fmt::format("  {:<42}{:>12.2f}\n", "pipeline bubble", 1e3 * t.bubble);
  o << fmt::format("  {:<42}{:>12.2f}\n", "data-parallel reduction (exposed)", 1e3 * t.dp_comm);
  o << fmt::format("  {:<42}{:>12.2f}\n", "optimizer (AdamW, grad norm, zeroing)", 1e3 * t.optimizer);
  o << fmt::format("  {:<42}{:>12.2f}\n", "step", 1e3 * t.step);
  o << fmt::format("tokens/s {:.0f} ({:.0f} per rank), MFU {:.1f} % (PaLM: 6N + 12 L H D T FLOPs per token)\n",
                   t.tokens_per_s, t.tokens_per_s / p.ranks, 100 * t.mfu);
  return o.str();
}

std::string to_json(const Plan& p) {
  nlohmann::json j;
  j["layout"] = p.layout;
  j["ranks"] = p.ranks;
  j["capacity"] = p.capacity;
  j["fits"] = p.fits;
  j["over_90"] = p.over_90;
  j["largest_term"] = p.largest_term;
  for (const auto& m : p.memory)
    j["memory"].push_back({{"rank_kind", m.rank_kind},       {"pp_rank", m.pp_rank},
                           {"parameters", m.parameters},     {"gradients", m.gradients},
                           {"optimizer", m.optimizer},       {"activations", m.activations},
                           {"pipeline", m.pipeline},         {"workspace", m.workspace},
                           {"runtime", m.runtime},           {"arena", m.arena},
                           {"slots", m.slots},               {"allocated", m.allocated()},
                           {"total", m.total()},             {"per_microbatch_none", m.per_microbatch_none},
                           {"per_microbatch_selective", m.per_microbatch_selective},
                           {"per_microbatch_full", m.per_microbatch_full}});
  const StepTime& t = p.time;
  j["time"] = {{"compute", t.compute}, {"recompute", t.recompute}, {"tp_comm", t.tp_comm},
               {"pp_comm", t.pp_comm}, {"bubble", t.bubble},       {"dp_comm", t.dp_comm},
               {"optimizer", t.optimizer}, {"step", t.step},       {"tokens_per_s", t.tokens_per_s},
               {"mfu", t.mfu}};
  return j.dump(1) + "\n";
}

std::string sweep_table(const std::vector<std::pair<config::Config, Plan>>& rows, bool csv) {
  std::ostringstream o;
  if (csv)
    o << "rank,layout,dp,tp,pp,schedule,chunks,zero,sp,micro_batch,recompute,peak_mib,capacity_mib,over_90,step_ms,"
         "tokens_per_s,mfu\n";
  else
    o << fmt::format("| # | layout | peak MiB / rank | step ms | tokens/s | MFU | memory |\n"
                     "|---|---|---|---|---|---|---|\n");
  int i = 0;
  for (const auto& [c, p] : rows) {
    ++i;
    if (csv)
      o << fmt::format("{},{},{},{},{},{},{},{},{},{},{},{:.1f},{:.1f},{},{:.3f},{:.1f},{:.4f}\n", i, p.layout,
                       c.parallel.dp, c.parallel.tp, c.parallel.pp, c.parallel.pp_schedule, c.parallel.pp_chunks,
                       c.parallel.zero, c.parallel.sequence_parallel ? 1 : 0, c.train.micro_batch, c.train.recompute,
                       p.peak_memory() / 1048576.0, p.capacity / 1048576.0, p.over_90 ? 1 : 0, 1e3 * p.time.step,
                       p.time.tokens_per_s, p.time.mfu);
    else
      o << fmt::format("| {} | {} | {:.0f} | {:.1f} | {:.0f} | {:.1f} % | {} |\n", i, p.layout,
                       p.peak_memory() / 1048576.0, 1e3 * p.time.step, p.time.tokens_per_s, 100 * p.time.mfu,
                       !p.fits ? "does not fit" : p.over_90 ? "over 90 %" : "ok");
  }
  return o.str();
}

}  // namespace kumiko::plan
