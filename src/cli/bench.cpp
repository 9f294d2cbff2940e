// kumiko bench gemm: measures this machine's fp32 GEMM rate (the peak used for
// MFU on CPUs, [backend] peak_gflops).
#include <chrono>
#include <cstdio>
#include <memory>
#include <vector>

#include "cli/commands.h"
#include "kumiko/core/rng.h"
#include "kumiko/ops/matmul.h"
#include "kumiko/train/trainer.h"

namespace kumiko::cli {
namespace {

struct BenchOptions {
  int threads = 0;
  int size = 2048;
  int repeats = 5;
};

int run_gemm(const BenchOptions& o) {
  train::set_threads(o.threads);
  const int64_t n = o.size;
  std::vector<float> a(n * n), b(n * n), c(n * n);
  rng::fill_normal(a.data(), a.size(), 1, "bench.a", 0, 1);
  rng::fill_normal(b.data(), b.size(), 1, "bench.b", 0, 1);
  double best = 0;
  for (int r = 0; r < o.repeats + 1; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    cpu::matmul<float>(false, true, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f, c.data(), n);
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (r > 0) best = std::max(best, 2.0 * n * n * n / dt / 1e9);  // first run warms up
  }
  std::printf("sgemm %ldx%ldx%ld: %.1f GFLOP/s (best of %d); use --backend.peak_gflops=%.0f\n",
              static_cast<long>(n), static_cast<long>(n), static_cast<long>(n), best, o.repeats, best);
  return 0;
}

}  // namespace

void add_bench_command(CLI::App& app, Registry& registry) {
  CLI::App* bench = app.add_subcommand("bench", "Micro-benchmarks of this machine");
  CLI::App* gemm = bench->add_subcommand("gemm", "fp32 GEMM rate (the CPU peak for MFU)");
  auto o = std::make_shared<BenchOptions>();
  gemm->add_option("--threads", o->threads, "Threads (0 = all cores)");
  gemm->add_option("--size", o->size, "Matrix size n (n x n x n)")->check(CLI::Range(16, 16384));
  gemm->add_option("--repeats", o->repeats, "Timed repetitions")->check(CLI::Range(1, 1000));
  bench->require_subcommand(1);
  registry.add({bench, [o] { return run_gemm(*o); }, {}});
}

}  // namespace kumiko::cli
