// kumiko bench gemm: measures this machine's fp32 GEMM rate (the peak used for
// MFU on CPUs, [backend] peak_gflops).
// kumiko bench comm: under mpirun/srun, times all_reduce, reduce_scatter and
// all_gather of float buffers over a range of sizes (docs/performance.md).
// kumiko bench kernels: every CUDA kernel against cuBLASLt / cuDNN / the copy
// bandwidth on the same GPU (src/gpu/bench.cpp).
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <vector>

#include "cli/commands.h"
#include "kumiko/core/bf16.h"
#include "kumiko/core/cpu_features.h"
#include "kumiko/comm/communicator.h"
#include "kumiko/core/error.h"
#include "kumiko/core/rng.h"
#include "kumiko/gpu/bench.h"
#include "kumiko/ops/matmul.h"
#include "kumiko/ops/matmul_bf16.h"
#include "kumiko/plan/plan.h"
#include "kumiko/train/threads.h"

namespace kumiko::cli {
namespace {

struct BenchOptions {
  int threads = 0;
  int size = 2048;
  int repeats = 5;
};

struct CommBenchOptions {
  uint64_t min_bytes = 1024;         // 1 KiB
  uint64_t max_bytes = 64ull << 20;  // 64 MiB
  int iters = 20;
  int warmup = 5;
};

// The smallest --size whose rate is saved as the MFU peak.
constexpr int kPeakMinSize = 1024;

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
  // Saved for MFU: kumiko train reads it when backend.peak_gflops is not set. Small
  // matrices do not reach the machine's rate (256^3: 168 against 206 GFLOP/s at 2048^3
  // on Zen 4), so a quick run leaves the saved peak alone.
  const int threads = omp_get_max_threads();
  const std::string cache = plan::default_cache_dir();
  const bool save = n >= kPeakMinSize;
  if (save) plan::save_cpu_peak_gflops(threads, best, cache);
  std::printf("sgemm %ldx%ldx%ld, %d thread(s): %.1f GFLOP/s (best of %d); ", static_cast<long>(n),
              static_cast<long>(n), static_cast<long>(n), threads, best, o.repeats);
  if (save)
    std::printf("saved in %s/cpu_rates.json as the MFU peak of kumiko train at %d thread(s) (or set "
                "--backend.peak_gflops=%.0f)\n",
                cache.c_str(), threads, best);
  else
    std::printf("not saved as the MFU peak: --size %d or more measures that\n", kPeakMinSize);
  std::printf("cpu: %s; kumiko's kernels use what the compiler vectorised for (KUMIKO_MARCH / KUMIKO_NATIVE), "
              "OpenBLAS picks its own kernels (OPENBLAS_VERBOSE=2 names them)\n",
              cpu_features().describe().c_str());
  // The bf16 GEMMs of backend.dtype = bf16, side by side with the sgemm above, on
  // the same matrices rounded to bf16 (same shape: y = x W^T).
  std::vector<bf16> ab(n * n), bb(n * n);
  for (int64_t i = 0; i < n * n; ++i) ab[i] = to_bf16(a[i]), bb[i] = to_bf16(b[i]);
  double best_bf16 = 0;
  cpu::Bf16Gemm fastest = cpu::Bf16Gemm::emulated;
  for (const cpu::Bf16Gemm g : cpu::bf16_gemms_available()) {
    double rate = 0;
    for (int r = 0; r < o.repeats + 1; ++r) {
      const auto t0 = std::chrono::steady_clock::now();
      cpu::matmul_bf16(g, false, true, n, n, n, ab.data(), n, bb.data(), n, 0.0f, c.data(), n);
      const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (r > 0) rate = std::max(rate, 2.0 * n * n * n / dt / 1e9);
    }
    if (rate > best_bf16) best_bf16 = rate, fastest = g;
    std::printf("bf16 gemm %-9s %ldx%ldx%ld, %d thread(s): %.1f GFLOP/s (%.2fx sgemm; %s)\n", cpu::bf16_gemm_name(g),
                static_cast<long>(n), static_cast<long>(n), static_cast<long>(n), threads, rate, rate / best,
                cpu::bf16_gemm_kernels(g).c_str());
  }
  if (save) {
    plan::save_cpu_peak_gflops(threads, best_bf16, cache, "bf16");
    std::printf("saved %.1f GFLOP/s as the bf16 MFU peak of kumiko train at %d thread(s)\n", best_bf16, threads);
  }
  const auto have = cpu::bf16_gemms_available();
  auto has = [&](cpu::Bf16Gemm g) { return std::find(have.begin(), have.end(), g) != have.end(); };
  if (!has(cpu::Bf16Gemm::openblas))
    std::printf("bf16 gemm openblas  not available: %s\n", cpu::sbgemm_unavailable_reason().c_str());
  if (!has(cpu::Bf16Gemm::onednn))
    std::printf("bf16 gemm onednn    not available: %s\n", cpu::onednn_unavailable_reason().c_str());
  const cpu::Bf16Gemm chosen = cpu::bf16_gemm_default();
  std::printf("backend.bf16_gemm = auto uses %s here%s\n", cpu::bf16_gemm_name(chosen),
              chosen == fastest ? " (the fastest above)"
                                : (std::string("; the fastest above is ") + cpu::bf16_gemm_name(fastest) +
                                   ": set backend.bf16_gemm = " + cpu::bf16_gemm_name(fastest))
                                      .c_str());
  return 0;
}

// Seconds per call of `op`, averaged over `iters` calls after `warmup` untimed ones,
// taken from the slowest rank (a collective is done when its last rank is done).
template <typename Op>
double time_collective(comm::Communicator& world, int warmup, int iters, Op op) {
  for (int i = 0; i < warmup; ++i) op();
  world.barrier();
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < iters; ++i) op();
  double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / iters;
  world.all_reduce(&dt, 1, comm::ReduceOp::max);
  return dt;
}

// Bandwidths as nccl-tests defines them (doc/PERFORMANCE.md in
// github.com/NVIDIA/nccl-tests): algbw = bytes / time with `bytes` the full buffer
// (for reduce_scatter the input, for all_gather the output), and busbw = algbw x
// a factor that makes it comparable to the link's peak whatever the rank count n:
//   all_reduce 2(n-1)/n; reduce_scatter and all_gather (n-1)/n.
int run_comm(const CommBenchOptions& o) {
  KUMIKO_USER_CHECK(o.min_bytes >= 4 && o.min_bytes <= o.max_bytes,
                    "bench comm: expected 4 <= --min-bytes <= --max-bytes, got --min-bytes=",
                    o.min_bytes, " --max-bytes=", o.max_bytes);
  KUMIKO_USER_CHECK(o.max_bytes / 4 <= (1u << 30), "bench comm: --max-bytes=", o.max_bytes,
                    " is above the 4 GiB this benchmark allows");
  comm::Communicator& world = comm::world();  // MPI_Init under mpirun (bench comm only)
  const int n = world.size();
  const bool root = world.rank() == 0;
  const double all_reduce_factor = 2.0 * (n - 1) / n,
               gather_factor = static_cast<double>(n - 1) / n;
  const int64_t max_count = static_cast<int64_t>(o.max_bytes / 4);
  std::vector<float> buf(max_count), recv(max_count / n + 1);  // [max_count], [max_count / n]
  rng::fill_normal(buf.data(), buf.size(), 1, "bench.comm", world.rank(), 1e-3f);
  if (root) {
    std::printf(
        "kumiko bench comm: %d rank(s) (%s), float32, %d warmup + %d timed iterations, "
        "time = mean per call on the slowest rank\n",
        n, comm::mpi_available() ? "MPI" : "local", o.warmup, o.iters);
    std::printf("%-15s %12s %12s %12s %12s %12s\n", "op", "bytes", "count", "time(us)",
                "algbw(GB/s)", "busbw(GB/s)");
  }
  struct Row {
    const char* op;
    double factor;
  };
  for (const Row row : {Row{"all_reduce", all_reduce_factor}, Row{"reduce_scatter", gather_factor},
                        Row{"all_gather", gather_factor}}) {
    const std::string op = row.op;
    for (uint64_t bytes = o.min_bytes; bytes <= o.max_bytes; bytes *= 4) {
      int64_t count = static_cast<int64_t>(bytes / 4);
      // Collectives over blocks: the largest multiple of n, every rank one equal block.
      if (op != "all_reduce") count = std::max<int64_t>(count / n, 1) * n;
      const std::vector<int64_t> counts(n, count / n);
      double dt = 0;
      if (op == "all_reduce") {
        dt = time_collective(world, o.warmup, o.iters,
                             [&] { world.all_reduce(buf.data(), count, comm::ReduceOp::sum); });
      } else if (op == "reduce_scatter") {
        dt = time_collective(world, o.warmup, o.iters, [&] {
          world.reduce_scatter(buf.data(), recv.data(), counts, comm::ReduceOp::sum);
        });
      } else {
        dt = time_collective(world, o.warmup, o.iters,
                             [&] { world.all_gather(buf.data(), counts); });
      }
      const double full_bytes = 4.0 * static_cast<double>(count);
      const double algbw = full_bytes / dt / 1e9;
      if (root)
        std::printf("%-15s %12.0f %12ld %12.1f %12.3f %12.3f\n", row.op, full_bytes,
                    static_cast<long>(count), dt * 1e6, algbw, algbw * row.factor);
    }
  }
  return 0;
}

}  // namespace

void add_bench_command(CLI::App& app, Registry& registry) {
  CLI::App* bench = app.add_subcommand("bench", "Micro-benchmarks of this machine");
  CLI::App* gemm =
      bench->add_subcommand("gemm", "fp32 GEMM rate (the CPU peak for MFU) and the bf16 GEMMs beside it");
  auto o = std::make_shared<BenchOptions>();
  gemm->add_option("--threads", o->threads,
                   "Threads (0 = OMP_NUM_THREADS, else every core it may run on, within a container's CPU limit)");
  gemm->add_option("--size", o->size, "Matrix size n (n x n x n); 1024 or more saves the rates as the MFU peaks")
      ->check(CLI::Range(16, 16384));
  gemm->add_option("--repeats", o->repeats, "Timed repetitions")->check(CLI::Range(1, 1000));

  CLI::App* comm = bench->add_subcommand(
      "comm",
      "all_reduce / reduce_scatter / all_gather time and bandwidth (run under mpirun or srun)");
  auto c = std::make_shared<CommBenchOptions>();
  comm->add_option("--min-bytes", c->min_bytes, "Smallest buffer (e.g. 1KB; KB = 1024 B)")
      ->transform(CLI::AsSizeValue(false))
      ->capture_default_str();
  comm->add_option("--max-bytes", c->max_bytes, "Largest buffer (e.g. 64MB); sizes grow 4x")
      ->transform(CLI::AsSizeValue(false))
      ->capture_default_str();
  comm->add_option("--iters", c->iters, "Timed iterations per size")
      ->check(CLI::Range(1, 100000))
      ->capture_default_str();
  comm->add_option("--warmup", c->warmup, "Untimed iterations per size")
      ->check(CLI::Range(0, 100000))
      ->capture_default_str();

  CLI::App* kernels = bench->add_subcommand(
      "kernels", "CUDA kernels vs cuBLASLt, cuDNN and the copy bandwidth on this GPU (CUDA builds)");
  auto k = std::make_shared<gpu::KernelBenchOptions>();
  kernels->add_flag("--quick", k->quick, "Smaller sizes, fewer repetitions (a smoke run)");
  kernels->add_option("--markdown", k->markdown, "Also write the table to this file");

  bench->require_subcommand(1);
  registry.add({bench,
                [o, c, k, comm, kernels] {
                  if (kernels->parsed()) return gpu::run_kernel_benchmarks(*k);
                  return comm->parsed() ? run_comm(*c) : run_gemm(*o);
                },
                {}});
}

}  // namespace kumiko::cli
