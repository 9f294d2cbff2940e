// kumiko plan, devices: datasheet accelerators, and this machine's CPU measured
// with kumiko's own kernels on the model's shapes (cached).
#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <sstream>
#include <type_traits>
#include <vector>

#include <nlohmann/json.hpp>

#include "kumiko/backend/cpu.h"
#include "kumiko/backend/cpu_bf16.h"
#include "kumiko/core/error.h"
#include "kumiko/core/rng.h"
#include "kumiko/model/transformer.h"
#include "kumiko/ops/bf16.h"
#include "kumiko/parallel/engine.h"
#include "kumiko/plan/plan.h"
#include "plan/internal.h"

namespace kumiko::plan {

namespace {
constexpr double kGB = 1e9;
constexpr double kGiB = 1024.0 * 1024 * 1024;

// Sustained fractions of the datasheet peaks (docs/plan.md): dense GEMMs, attention
// (FlashAttention-2 reaches 50-70 % of the GEMM rate), streaming memory.
constexpr double kMatmulFraction = 0.70, kAttentionFraction = 0.40, kMemoryFraction = 0.80;
}  // namespace

Device known_device(const std::string& name, const std::string& dtype) {
  struct Sheet {
    const char* name;
    double memory_gib, bf16_tflops, fp32_tflops, hbm_tbs, nvlink_gbs, net_gbs;
    const char* source;
  };
  // Dense (no sparsity) peaks, SXM parts. NVLink: per direction per GPU; network:
  // one 200 Gb/s HDR (A100) or 400 Gb/s NDR (H100/H200) port per GPU.
  static const Sheet sheets[] = {
      {"a100", 80, 312, 19.5, 2.039, 300, 25, "NVIDIA A100 datasheet (SXM4 80GB), HDR InfiniBand"},
      {"h100", 80, 989, 67, 3.35, 450, 50, "NVIDIA H100 datasheet (SXM5 80GB), NDR InfiniBand"},
      {"h200", 141, 989, 67, 4.8, 450, 50, "NVIDIA H200 datasheet (SXM 141GB), NDR InfiniBand"},
  };
  for (const auto& s : sheets) {
    if (name != s.name) continue;
    Device d;
    d.name = s.name;
    d.source = s.source;
    d.memory = s.memory_gib * kGiB;
    d.peak_flops = (dtype == "bf16" ? s.bf16_tflops : s.fp32_tflops) * 1e12;
    d.matmul_flops = kMatmulFraction * d.peak_flops;
    d.attention_flops = kAttentionFraction * d.peak_flops;
    d.memory_bw = kMemoryFraction * s.hbm_tbs * 1e12;
    d.intra_bw = s.nvlink_gbs * kGB;
    d.intra_lat = 5e-6;
    d.inter_bw = s.net_gbs * kGB;
    d.inter_lat = 10e-6;
    return d;
  }
  throw UserError("kumiko plan --gpu " + name + ": expected h100, h200, a100 or cpu");
}

std::string default_cache_dir() {
  if (const char* dir = std::getenv("KUMIKO_CACHE_DIR"); dir && *dir) return dir;
  const char* home = std::getenv("HOME");
  return std::string(home && *home ? home : "/tmp") + "/.cache/kumiko";
}

namespace {

std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  for (std::string line; std::getline(in, line);)
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  return "unknown cpu";
}

nlohmann::json read_cache(const std::filesystem::path& file) {
  nlohmann::json cache = nlohmann::json::object();
  if (std::ifstream in(file); in) {
    try {
      in >> cache;
    } catch (const std::exception&) {
      cache = nlohmann::json::object();  // a damaged cache is measured again
    }
  }
  return cache;
}

// Written whole to a temporary file, then renamed: readers never see half a file.
void write_cache(const std::filesystem::path& file, const nlohmann::json& cache) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::create_directories(file.parent_path(), ec);
  const fs::path tmp = file.string() + ".tmp." + std::to_string(getpid());
  if (std::ofstream out(tmp); out && (out << cache.dump(1) << "\n")) {
    out.close();
    fs::rename(tmp, file, ec);
  }
}

// Best of `reps` wall times of f.
double best_seconds(int reps, const std::function<void()>& f) {
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}

std::vector<float> random(int64_t n, uint64_t seed) {
  std::vector<float> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[static_cast<size_t>(i)] = 0.02f * rng::normal(seed, static_cast<uint64_t>(i));
  return v;
}

struct Rates {
  double matmul = 0, attention = 0, memory = 0, peak = 0;
  double layer = 0, head = 0, adamw = 0;  // seconds: per layer, the rest of a micro-batch, per AdamW element
};

// `n` random values as the backend's activations (bf16 rounded from fp32 for CpuBf16).
template <typename B>
std::vector<typename B::Act> random_act(int64_t n, uint64_t seed) {
  std::vector<float> f = random(n, seed);
  if constexpr (std::is_same_v<typename B::Act, float>) {
    return f;
  } else {
    std::vector<typename B::Act> a(static_cast<size_t>(n));
    cpu::narrow(a.data(), f.data(), n);
    return a;
  }
}

// One micro-batch through the model itself at the layout's local shapes (tp's
// heads, MLP and vocabulary shares) with a and b layers (2 and 4, or 1 and 2 for
// smaller models; enough layers that caches hold what they hold in training): the
// difference per layer is one layer, the rest is embedding, head and loss. `be`: the
// backend the run would use (fp32, or bf16 with its GEMM choice).
template <typename B>
void time_layers(const Layout& l, B& be, Rates& r) {
  model::Dims d = l.dims;
  d.Hq /= l.tp;
  d.Hkv /= l.tp;
  d.F /= l.tp;
  d.V /= l.tp;
  std::vector<int32_t> ids(static_cast<size_t>(l.MB) * l.T);
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int32_t>(rng::philox(3, 0, i)[0] % d.V);
  const int64_t b = l.dims.L >= 4 ? 4 : 2, a = b / 2;
  double t[2];
  for (int k = 0; k < 2; ++k) {
    d.L = k == 0 ? a : b;
    if constexpr (requires { be.forget_packed_weights(); }) be.forget_packed_weights();  // the last model's
    model::BasicTransformer<B> m(d, l.MB, l.T, {}, {}, &be, l.recompute);
    m.params().initialize(1);
    t[k] = best_seconds(5, [&] { m.forward_backward(ids.data(), ids.data(), l.MB, l.T, 1.0); });
  }
  r.layer = std::max((t[1] - t[0]) / static_cast<double>(b - a), 1e-9);
  r.head = std::max(t[0] - static_cast<double>(a) * r.layer, 0.0);
  const int64_t n = 1 << 20;
  auto p = random(n, 40), g = random(n, 41), mm = random(n, 42), vv = random(n, 43);
  for (auto& x : vv) x = x * x;
  // bf16: the update also writes the parameter's bf16 working copy, and with packed
  // weights both packed copies (timed on a 1024 x 1024 linear weight, packed by a product).
  std::vector<typename B::Act> work;
  typename B::Act* w = nullptr;
  if constexpr (std::is_same_v<typename B::Act, float>) {
    w = p.data();
  } else {
    work.resize(static_cast<size_t>(n));
    w = work.data();
    cpu::narrow(w, p.data(), n);
    be.forget_packed_weights();  // the timing models' weights, freed
    // One product makes its packed copies (oneDNN's layout is asked for these rows).
    const int64_t rows = int64_t{l.MB} * l.T;
    std::vector<typename B::Act> x(static_cast<size_t>(rows * 1024)), y(x.size());
    be.linear(y.data(), x.data(), w, nullptr, rows, 1024, 1024);
  }
  const double s = best_seconds(3, [&] {
    be.adamw({{p.data(), w, g.data(), mm.data(), vv.data(), n, true}}, {1e-3, 0.9, 0.95, 1e-8, 0.1, 1.0, 1});
  });
  r.adamw = s / static_cast<double>(n);
}

// Times one layer's ops (and the head's) as the model calls them, on the local
// shapes of cfg's layout, with the current OpenMP threads, on backend `be`.
template <typename B>
Rates measure(const config::Config& cfg, B& be) {
  const Layout l = layout_of(cfg);
  const auto& d = l.dims;
  const int t = l.tp;
  const int64_t N = int64_t{l.MB} * l.T, C = d.C, F = d.F / t, W = d.qkv_width() / t, A = d.Hq / t * d.D,
                V = d.V / t, Hq = d.Hq / t, Hkv = d.Hkv / t;
  Rates r;
  // GEMMs: forward and backward of qkv, projection, MLP, and the head.
  struct Shape {
    int64_t in, out;
  };
  std::vector<Shape> shapes{{C, W}, {A, C}, {C, F}, {F, C}, {C, V}};
  if (d.llama) shapes.push_back({C, F});
  double flops = 0, secs = 0;
  // Every shape's weight held to the end: packed weights (CpuBf16) are known by address.
  std::vector<std::vector<typename B::Act>> weights;
  for (const auto& s : shapes) {
    auto x = random_act<B>(N * s.in, 1), y = random_act<B>(N * s.out, 3), dx = random_act<B>(N * s.in, 5);
    const auto& w = weights.emplace_back(random_act<B>(s.in * s.out, 2));
    auto dw = random(s.in * s.out, 4);
    secs += best_seconds(2, [&] {  // the first packs the weight where packed weights are on
      be.linear(y.data(), x.data(), w.data(), nullptr, N, s.in, s.out);
      be.linear_backward(dx.data(), false, dw.data(), false, nullptr, y.data(), x.data(), w.data(), N, s.in, s.out);
    });
    flops += 6.0 * N * s.in * s.out;
  }
  r.matmul = flops / secs;
  {
    auto qkv = random_act<B>(N * W, 6), out = random_act<B>(N * A, 7), dy = random_act<B>(N * A, 8),
         dqkv = random_act<B>(N * W, 9);
    std::vector<float> lse(static_cast<size_t>(l.MB * Hq * l.T));
    const double s = best_seconds(2, [&] {
      be.attention_forward(out.data(), lse.data(), qkv.data(), l.MB, l.T, Hq, Hkv, d.D);
      be.attention_backward(dqkv.data(), dy.data(), qkv.data(), out.data(), lse.data(), l.MB, l.T, Hq, Hkv, d.D);
    });
    r.attention = 3.5 * 2.0 * l.MB * Hq * static_cast<double>(l.T) * l.T * d.D / s;
  }
  {
    const int64_t n = 512;
    auto a = random_act<B>(n * n, 30), b = random_act<B>(n * n, 31), c = random_act<B>(n * n, 32);
    const double s = best_seconds(3, [&] { be.linear(c.data(), a.data(), b.data(), nullptr, n, n, n); });
    r.peak = std::max(r.matmul, 2.0 * n * n * n / s);
  }
  time_layers(l, be, r);
  // AdamW streams 28 bytes per element, 30 with the bf16 working copy, 34 with its two
  // packed copies too (docs/plan.md).
  double streamed = 28.0;
  if constexpr (!std::is_same_v<typename B::Act, float>) streamed = be.packed_weight_bytes() > 0 ? 34.0 : 30.0;
  r.memory = streamed / r.adamw;
  return r;
}

Rates measure(const config::Config& cfg) {
  if (cfg.backend.dtype == "bf16") {
    backend::CpuBf16 be(parallel::bf16_gemm_of(&cfg), layout_of(cfg).dims.D, cfg.backend.packed_weights);
    return measure(cfg, be);
  }
  backend::Cpu<float> be;
  return measure(cfg, be);
}

}  // namespace

Device measured_cpu(const config::Config& cfg, int threads, const std::string& cache_dir, bool remeasure) {
  const Layout l = layout_of(cfg);
  const auto& d = l.dims;
  std::ostringstream key;
  key << cpu_model() << " | threads " << threads << " | " << (d.llama ? "llama" : "gpt2") << " C" << d.C << " F"
      << d.F / l.tp << " W" << d.qkv_width() / l.tp << " H" << d.Hq / l.tp << "/" << d.Hkv / l.tp << " D" << d.D
      << " V" << d.V / l.tp << " N" << l.MB << "x" << l.T << " recompute " << model::recompute_name(l.recompute)
      << (d.tied ? " tied" : "");
  // bf16 rates belong to the GEMM that ran them (backend.bf16_gemm: auto picks by CPU).
  if (cfg.backend.dtype == "bf16") {
    key << " | bf16 " << cpu::bf16_gemm_name(parallel::bf16_gemm_of(&cfg));
    if (cpu_packs_weights(cfg)) key << " packed";
  }
  namespace fs = std::filesystem;
  const fs::path file = fs::path(cache_dir) / "cpu_rates.json";
  nlohmann::json cache = read_cache(file);
  Rates r;
  if (!remeasure && cache.contains(key.str())) {
    const auto& e = cache[key.str()];
    r = {e.value("matmul", 0.0), e.value("attention", 0.0), e.value("memory", 0.0), e.value("peak", 0.0),
         e.value("layer_s", 0.0), e.value("head_s", 0.0), e.value("adamw_s", 0.0)};
  }
  if (r.matmul <= 0 || r.attention <= 0 || r.memory <= 0 || r.layer <= 0) {
    // Large shapes (a GPU config's micro-batch on a few cores) take minutes: say so.
    std::cerr << "kumiko plan: measuring this CPU's kernels on the layout's shapes (" << l.MB << " x " << l.T
              << " tokens per micro-batch, " << threads << " thread(s)); done once, then cached in " << file.string()
              << "\n";
    const auto t0 = std::chrono::steady_clock::now();
    const int saved = omp_get_max_threads();
    omp_set_num_threads(threads);
    r = measure(cfg);
    omp_set_num_threads(saved);
    char took[64];
    std::snprintf(took, sizeof took, "%.1f s", std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    std::cerr << "kumiko plan: measured in " << took << "\n";
    cache[key.str()] = {{"matmul", r.matmul}, {"attention", r.attention}, {"memory", r.memory}, {"peak", r.peak},
                        {"layer_s", r.layer},  {"head_s", r.head},         {"adamw_s", r.adamw}};
    write_cache(file, cache);
  }
  Device dev;
  dev.name = "cpu";
  const std::string kernels =
      cfg.backend.dtype == "bf16"
          ? std::string("kumiko's CPU kernels in bf16 (") + cpu::bf16_gemm_name(parallel::bf16_gemm_of(&cfg)) +
                " GEMM)"
          : std::string("kumiko's CPU kernels");
  dev.source = "measured with " + kernels + " on this layout's shapes, " + std::to_string(threads) +
               " thread(s) (" + cpu_model() + "; cache " + file.string() + ")";
  const double pages = static_cast<double>(sysconf(_SC_PHYS_PAGES)), page = static_cast<double>(sysconf(_SC_PAGE_SIZE));
  dev.memory = pages * page;
  dev.peak_flops = r.peak;
  dev.matmul_flops = r.matmul;
  dev.attention_flops = r.attention;
  dev.memory_bw = r.memory;
  dev.layer_s = r.layer;
  dev.head_s = r.head;
  dev.adamw_s = r.adamw;
  // MPI over shared memory within a node; a 100 Gb/s-class fabric between nodes.
  dev.intra_bw = 5 * kGB;
  dev.intra_lat = 2e-6;
  dev.inter_bw = 10 * kGB;
  dev.inter_lat = 5e-6;
  return dev;
}

}  // namespace kumiko::plan

namespace kumiko::plan {

namespace {
std::string peak_key(int threads, const std::string& dtype) {
  return cpu_model() + " | threads " + std::to_string(threads) + (dtype == "bf16" ? " | bf16 gemm peak" : " | gemm peak");
}
}  // namespace

double cached_cpu_peak_gflops(int threads, const std::string& cache_dir, const std::string& dtype) {
  const auto cache = read_cache(std::filesystem::path(cache_dir) / "cpu_rates.json");
  const auto it = cache.find(peak_key(threads, dtype));
  return it != cache.end() && it->is_object() ? it->value("gflops", 0.0) : 0.0;
}

void save_cpu_peak_gflops(int threads, double gflops, const std::string& cache_dir, const std::string& dtype) {
  namespace fs = std::filesystem;
  const fs::path file = fs::path(cache_dir) / "cpu_rates.json";
  auto cache = read_cache(file);
  cache[peak_key(threads, dtype)] = {{"gflops", gflops}};
  write_cache(file, cache);
}

double gpu_peak_flops(const std::string& device_name, const std::string& dtype) {
  std::string upper;
  for (char c : device_name) upper += static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  // The table holds SXM parts; PCIe and NVL H100s have lower peaks: unknown here.
  if (upper.find("H100") != std::string::npos &&
      (upper.find("PCIE") != std::string::npos || upper.find("NVL") != std::string::npos))
    return 0;
  for (const char* name : {"h100", "h200", "a100"}) {
    std::string n = name;
    for (char& c : n) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    if (upper.find(n) != std::string::npos) return known_device(name, dtype).peak_flops;
  }
  return 0;
}

}  // namespace kumiko::plan
