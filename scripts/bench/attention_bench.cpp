// Standalone timing of the CPU attention kernels (not part of the build).
// Build against an existing build folder, e.g.:
//   g++ -O3 -march=native -fopenmp -std=c++20 -I include -I . scripts/bench/attention_bench.cpp \
//     build/lib/libkumiko_kernels_cpu.a build/lib/libkumiko_core.a \
//     -lopenblas -lspdlog -lfmt -o /tmp/attention_bench
//   OMP_NUM_THREADS=2 /tmp/attention_bench [B T Hq Hkv D] [reps] [fp32|bf16] [overwrite|zeroed]
// overwrite (default): the backward overwrites dqkv, as the backends call it; zeroed: dqkv
// zeroed first and the backward accumulating into it (how the backends called it before
// the twenty-second session), both timed.
// scripts/bench/attention_vs_torch.sh builds it this way and runs it beside PyTorch.
// FLOPs count the causal half: fwd 2*T*T*D per (b, q head), bwd 2.5x fwd (the bf16
// kernels' (hi, lo) pairs for P and dS are not counted: the rate is the fp32 math's).
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "bench_args.h"
#include "kumiko/core/bf16.h"
#include "kumiko/ops/attention.h"

template <typename S>
static S from_float(float x) {
  if constexpr (std::is_same_v<S, kumiko::bf16>) return kumiko::to_bf16(x);
  else return x;
}

template <typename S>
static void run(int64_t B, int64_t T, int64_t Hq, int64_t Hkv, int64_t D, int reps, bool zeroed) {
  using M = kumiko::math_t<S>;
  const int64_t row = (Hq + 2 * Hkv) * D;
  std::mt19937 gen(1);
  std::normal_distribution<float> nd(0.f, 1.f);
  std::vector<S> qkv(static_cast<size_t>(B * T * row)), dqkv(qkv.size());
  std::vector<S> out(static_cast<size_t>(B * T * Hq * D)), dout(out.size());
  std::vector<M> lse(static_cast<size_t>(B * Hq * T));
  for (auto& x : qkv) x = from_float<S>(nd(gen));
  for (auto& x : dout) x = from_float<S>(nd(gen));
  using clock = std::chrono::steady_clock;
  auto ms = [](clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); };
  double best_f = 1e30, best_b = 1e30, best_fb = 1e30, sum_f = 0, sum_b = 0;
  for (int r = 0; r < reps + 2; ++r) {
    const auto t0 = clock::now();
    kumiko::cpu::attention_forward<S>(out.data(), lse.data(), qkv.data(), B, T, Hq, Hkv, D);
    const auto t1 = clock::now();
    if (zeroed) std::fill(dqkv.begin(), dqkv.end(), from_float<S>(0.f));
    kumiko::cpu::attention_backward<S>(dqkv.data(), dout.data(), qkv.data(), out.data(),
                                       lse.data(), B, T, Hq, Hkv, D, /*overwrite=*/!zeroed);
    const auto t2 = clock::now();
    if (r < 2) continue;  // warm-up
    best_f = std::min(best_f, ms(t1 - t0));
    best_b = std::min(best_b, ms(t2 - t1));
    best_fb = std::min(best_fb, ms(t2 - t0));
    sum_f += ms(t1 - t0);
    sum_b += ms(t2 - t1);
  }
  const double fwd = 2.0 * T * T * D * B * Hq, bwd = 2.5 * fwd;
  std::printf("B=%ld T=%ld Hq=%ld Hkv=%ld D=%ld threads=%d %s %s\n", B, T, Hq, Hkv, D,
              omp_get_max_threads(), std::is_same_v<S, float> ? "fp32" : "bf16",
              zeroed ? "zeroed" : "overwrite");
  std::printf("fwd  best %.2f ms (%.1f GFLOP/s)  mean %.2f ms\n", best_f, fwd / best_f * 1e-6,
              sum_f / reps);
  std::printf("bwd  best %.2f ms (%.1f GFLOP/s)  mean %.2f ms\n", best_b, bwd / best_b * 1e-6,
              sum_b / reps);
  std::printf("f+b  best %.2f ms (%.1f GFLOP/s)\n", best_f + best_b,
              (fwd + bwd) / (best_f + best_b) * 1e-6);
  // The best forward + backward of one repetition, as torch_attention.py measures it.
  std::printf("fb_ms=%.3f\n", best_fb);
}

int main(int argc, char** argv) {
  int64_t B = 8, T = 256, Hq = 4, Hkv = 4, D = 64;
  int reps = 20;
  if ((argc != 1 && argc < 6) || argc > 9) {
    std::fprintf(stderr, "usage: %s [B T Hq Hkv D [reps [fp32|bf16 [overwrite|zeroed]]]]\n",
                 argv[0]);
    return 2;
  }
  if (argc >= 6) {
    const int64_t max = 1 << 20;
    B = bench::positive("attention_bench", argv[1], "B", max);
    T = bench::positive("attention_bench", argv[2], "T", max);
    Hq = bench::positive("attention_bench", argv[3], "Hq", max);
    Hkv = bench::positive("attention_bench", argv[4], "Hkv", max);
    D = bench::positive("attention_bench", argv[5], "D", max);
    if (Hq % Hkv != 0) {
      std::fprintf(stderr, "attention_bench: error: Hq (%ld) must be a multiple of Hkv (%ld)\n", Hq,
                   Hkv);
      return 2;
    }
  }
  if (argc >= 7)
    reps = static_cast<int>(bench::positive("attention_bench", argv[6], "reps", 1 << 20));
  const std::string dtype = argc >= 8 ? argv[7] : "fp32";
  const std::string form = argc >= 9 ? argv[8] : "overwrite";
  if (form != "overwrite" && form != "zeroed") {
    std::fprintf(stderr,
                 "attention_bench: error: the backward's form must be overwrite or zeroed, not '%s'\n",
                 form.c_str());
    return 2;
  }
  const bool zeroed = form == "zeroed";
  if (dtype == "bf16") run<kumiko::bf16>(B, T, Hq, Hkv, D, reps, zeroed);
  else if (dtype == "fp32") run<float>(B, T, Hq, Hkv, D, reps, zeroed);
  else {
    std::fprintf(stderr, "attention_bench: error: dtype must be fp32 or bf16, not '%s'\n",
                 dtype.c_str());
    return 2;
  }
  return 0;
}
