// kumiko plan --config FILE [--gpu h100|h200|a100|cpu] [--nodes N] [--gpus-per-node G]
//              [--sweep [--format md|csv] [--out FILE]] [--section.key=value ...]
// Memory per rank and step time of a layout before the job is queued (docs/plan.md).
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <memory>
#include <set>
#include <string>
#include <thread>

#include "cli/commands.h"
#include "kumiko/config/config.h"
#include "kumiko/core/error.h"
#include "kumiko/core/threads.h"
#include "kumiko/plan/plan.h"

namespace kumiko::cli {

namespace {

struct PlanOptions {
  std::string gpu;  // "" = from backend.device
  int nodes = 0, per_node = 0, cores = 0;
  bool sweep = false, remeasure = false;
  std::string format = "md", out, cache_dir;
  int top = 20;
  double intra_bw = 0, inter_bw = 0, intra_lat = 0, inter_lat = 0;  // GB/s, microseconds; 0 = device default
};

int run_plan(config::Config cfg, const PlanOptions& o) {
  std::string gpu = o.gpu.empty() ? (cfg.backend.device == "cuda" ? "h100" : "cpu") : o.gpu;
  cfg.backend.device = gpu == "cpu" ? "cpu" : "cuda";
  config::validate(cfg);
  const int ranks = cfg.parallel.dp * cfg.parallel.tp * cfg.parallel.pp;
  plan::Cluster cluster;
  if (gpu == "cpu") {
    const int cores = o.cores > 0 ? o.cores : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    cluster.ranks_per_node = o.per_node > 0 ? o.per_node : (o.nodes > 0 ? std::max(1, ranks / o.nodes) : ranks);
    cluster.nodes = o.nodes > 0 ? o.nodes : (ranks + cluster.ranks_per_node - 1) / cluster.ranks_per_node;
    cluster.cores_per_node = cores;
    // OMP_NUM_THREADS describes this machine: not used when planning another one.
    const bool this_machine = o.cores == 0 && o.per_node == 0 && o.nodes == 0;
    const int threads = planned_threads(cfg.backend.threads, cores, cluster.ranks_per_node, this_machine);
    // Every part of the plan (memory: oneDNN's scratchpad; time) with these threads.
    cfg.backend.threads = threads;
    const std::string cache = o.cache_dir.empty() ? plan::default_cache_dir() : o.cache_dir;
    // --remeasure: each layout's shapes once in this run, then from the cache.
    auto measured = std::make_shared<std::set<std::string>>();
    const bool remeasure = o.remeasure;
    cluster.device_for = [threads, cache, remeasure, measured](const config::Config& c) {
      const std::string shapes = std::to_string(c.parallel.tp) + "/" + std::to_string(c.train.micro_batch) + "/" +
                                 c.train.recompute;
      return plan::measured_cpu(c, threads, cache, remeasure && measured->insert(shapes).second);
    };
    cluster.device = cluster.device_for(cfg);
  } else {
    cluster.device = plan::known_device(gpu, cfg.backend.dtype);
    cluster.ranks_per_node = o.per_node > 0 ? o.per_node : std::min(8, ranks);
    cluster.nodes = o.nodes > 0 ? o.nodes : std::max(1, (ranks + cluster.ranks_per_node - 1) / cluster.ranks_per_node);
  }
  auto& dev = cluster.device;
  if (o.intra_bw > 0) dev.intra_bw = o.intra_bw * 1e9;
  if (o.inter_bw > 0) dev.inter_bw = o.inter_bw * 1e9;
  if (o.intra_lat > 0) dev.intra_lat = o.intra_lat * 1e-6;
  if (o.inter_lat > 0) dev.inter_lat = o.inter_lat * 1e-6;
  if (cluster.device_for) {
    // Measured rates come per layout; the link settings stay as given.
    auto measure = cluster.device_for;
    const plan::Device links = dev;
    cluster.device_for = [measure, links](const config::Config& c) {
      plan::Device d = measure(c);
      d.intra_bw = links.intra_bw, d.inter_bw = links.inter_bw, d.intra_lat = links.intra_lat,
      d.inter_lat = links.inter_lat;
      return d;
    };
  }

  KUMIKO_USER_CHECK(o.sweep || o.format != "csv", "kumiko plan --format csv: only with --sweep (one plan: md or json)");
  KUMIKO_USER_CHECK(!o.sweep || o.format != "json", "kumiko plan --sweep --format json: use md or csv");
  KUMIKO_USER_CHECK(o.sweep || o.out.empty(), "kumiko plan --out: only with --sweep");
  if (o.sweep) {
    auto rows = plan::sweep(cfg, cluster);
    KUMIKO_USER_CHECK(!rows.empty(), "kumiko plan --sweep: no valid layout of ", cluster.nodes * cluster.ranks_per_node,
                      " ranks for this model (check model.n_layers, heads and train.global_batch)");
    const size_t shown = o.out.empty() && o.top > 0 ? std::min<size_t>(rows.size(), o.top) : rows.size();
    std::vector<std::pair<config::Config, plan::Plan>> head(rows.begin(), rows.begin() + static_cast<long>(shown));
    const std::string table = plan::sweep_table(head, o.format == "csv");
    if (!o.out.empty()) {
      std::ofstream f(o.out);
      KUMIKO_USER_CHECK(f && (f << table), "kumiko plan --out ", o.out, ": cannot write the file");
      std::printf("kumiko plan: %zu layouts of %d ranks ranked by predicted tokens/s in %s\n", rows.size(),
                  cluster.nodes * cluster.ranks_per_node, o.out.c_str());
    } else {
      std::printf("%s", table.c_str());
      if (shown < rows.size()) std::printf("(%zu of %zu layouts; --top 0 or --out FILE for all)\n", shown, rows.size());
    }
    return 0;
  }
  const plan::Plan p = plan::make_plan(cfg, cluster);
  if (o.format == "json") {
    std::printf("%s", plan::to_json(p).c_str());
    return 0;
  }
  std::printf("%s", plan::describe(cfg, cluster, p).c_str());
  if (!p.fits) {
    const std::string fix = plan::cheapest_fix(cfg, cluster);
    std::printf("does not fit: the largest term is %s; %s\n", p.largest_term.c_str(),
                fix.empty() ? "no single change tried (zero, recompute, micro_batch, pp) fits" : ("try " + fix).c_str());
    return 3;  // scripts can tell a layout that does not fit
  }
  return 0;
}

}  // namespace

void add_plan_command(CLI::App& app, Registry& registry) {
  CLI::App* sub = app.add_subcommand("plan", "Memory per rank and step time of a layout, before the job runs");
  auto config = std::make_shared<config::Config>();
  auto o = std::make_shared<PlanOptions>();
  config::add_options(*sub, *config);
  sub->add_option("--gpu", o->gpu, "Device: h100, h200, a100 (datasheet rates) or cpu (this machine, measured)")
      ->check(CLI::IsMember({"h100", "h200", "a100", "cpu"}));
  sub->add_option("--nodes", o->nodes, "Nodes (default: as many as the layout needs)")->check(CLI::Range(1, 1000000));
  sub->add_option("--gpus-per-node,--ranks-per-node", o->per_node, "Ranks per node (default 8 GPUs; CPU: all ranks)")
      ->check(CLI::Range(1, 4096));
  sub->add_option("--cores", o->cores, "CPU cores per node shared by its ranks (default: this machine's)")
      ->check(CLI::Range(1, 100000));
  sub->add_flag("--sweep", o->sweep, "Rank every valid layout of the nodes x ranks by predicted tokens/s");
  sub->add_option("--format", o->format, "md (default), csv (sweep) or json (one plan: every term)")
      ->check(CLI::IsMember({"md", "csv", "json"}));
  sub->add_option("--out", o->out, "Write the sweep table (all layouts) to this file");
  sub->add_option("--top", o->top, "Sweep rows printed (0 = all)")->check(CLI::Range(0, 1000000));
  sub->add_flag("--remeasure", o->remeasure, "CPU: measure the rates again instead of using the cache");
  sub->add_option("--cache-dir", o->cache_dir, "CPU rate cache (default $KUMIKO_CACHE_DIR or ~/.cache/kumiko)");
  sub->add_option("--intra-bw", o->intra_bw, "Bandwidth within a node, GB/s per rank (default: the device's)")
      ->check(CLI::PositiveNumber);
  sub->add_option("--inter-bw", o->inter_bw, "Bandwidth between nodes, GB/s per rank")->check(CLI::PositiveNumber);
  sub->add_option("--intra-lat", o->intra_lat, "Latency within a node, microseconds")->check(CLI::PositiveNumber);
  sub->add_option("--inter-lat", o->inter_lat, "Latency between nodes, microseconds")->check(CLI::PositiveNumber);
  registry.add({sub, [config, o] { return run_plan(*config, *o); },
                [config](const CLI::ParseError& e) { return config::describe_parse_error(e, *config); }});
}

}  // namespace kumiko::cli
