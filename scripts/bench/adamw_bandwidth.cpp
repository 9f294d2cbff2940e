// Is the CPU AdamW at the machine's memory speed? kumiko's adamw_update (fp32 masters,
// moments and gradients, the bf16 working copy written in the same pass: 30 bytes an
// element; 28 without the copy) and sum_squares (the gradient norm's pass, 4 bytes),
// timed on n elements against plain loops that move bytes the same way and do no
// arithmetic to speak of: a read-modify-write of two arrays plus a read of a third
// (20 bytes, AdamW's moments), a copy (8 bytes) and a sum (4 bytes). Arrays of n
// elements are far larger than the caches, as a training step finds the optimizer
// state. Each line is the best of 6 repetitions and the bytes counted (write-allocate
// reads not counted). Not part of the build; after scripts/build.sh:
//   g++ -O3 -march=native -fno-math-errno -fopenmp -std=c++20 -Iinclude -I. -o /tmp/adamw_bandwidth
//       scripts/bench/adamw_bandwidth.cpp build/lib/libkumiko_kernels_cpu.a build/lib/libkumiko_core.a
//   (one command line)
//   OMP_NUM_THREADS=2 OMP_PROC_BIND=close /tmp/adamw_bandwidth [n [slices]]
// (default n = 124,000,000, about GPT-2 124M's parameters, in 150 slices, about its
// number of parameter arrays; 18 bytes an element of memory, 2.2 GB).
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include <omp.h>

#include "bench_args.h"
#include "kumiko/ops/adamw.h"
#include "kumiko/ops/elementwise.h"

namespace {

using Clock = std::chrono::steady_clock;

template <typename F>
void report(const char* what, double bytes_per_element, int64_t n, F&& body) {
  double best = 1e30;
  for (int rep = 1; rep <= 6; ++rep) {
    const auto start = Clock::now();
    body(rep);
    best = std::min(best, std::chrono::duration<double>(Clock::now() - start).count());
  }
  std::printf("%-44s %8.1f ms %7.1f GB/s (%g bytes an element)\n", what, best * 1e3,
              bytes_per_element * double(n) / best / 1e9, bytes_per_element);
}

template <typename T>
T* alloc(int64_t n) {
  auto* p = static_cast<T*>(std::aligned_alloc(64, ((size_t(n) * sizeof(T) + 63) / 64) * 64));
  if (!p) {
    std::fprintf(stderr, "error: cannot allocate %lld elements\n", static_cast<long long>(n));
    std::exit(1);
  }
  return p;
}

}  // namespace

int main(int argc, char** argv) {
  const int64_t n = argc > 1 ? bench::whole(argv[1]) : 124'000'000;
  const int64_t slices = argc > 2 ? bench::whole(argv[2]) : 150;
  if (argc > 3 || n < 1 || slices < 1 || slices > n) {
    std::fprintf(stderr, "usage: %s [n >= 1 [slices in 1..n]] (whole numbers)\n", argv[0]);
    return 2;
  }
  float* param = alloc<float>(n);
  float* grad = alloc<float>(n);
  float* m = alloc<float>(n);
  float* v = alloc<float>(n);
  auto* work = alloc<kumiko::bf16>(n);
  // Seeded, non-zero values (an LCG), written by the threads that will read them.
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const auto h = uint32_t(i) * 1664525u + 1013904223u;
    param[i] = float(h >> 8) * 0x1p-24f - 0.5f;
    grad[i] = float((h * 22695477u + 1u) >> 8) * 0x1p-30f;
    m[i] = 0.0f;
    v[i] = 0.0f;
  }
  std::vector<kumiko::cpu::AdamWSlice<float>> with_copy, without_copy;
  for (int64_t k = 0; k < slices; ++k) {
    const int64_t a = n * k / slices, e = n * (k + 1) / slices;
    with_copy.push_back({param + a, grad + a, m + a, v + a, work + a, e - a, 0.1});
    without_copy.push_back({param + a, grad + a, m + a, v + a, nullptr, e - a, 0.1});
  }
  std::printf("n = %lld elements in %lld slices\n", static_cast<long long>(n), static_cast<long long>(slices));
  report("copy (read 1, write 1)", 8, n, [&](int) {
#pragma omp parallel for simd schedule(static)
    for (int64_t i = 0; i < n; ++i) m[i] = grad[i];
  });
  report("read-modify-write 2, read 1", 20, n, [&](int) {
#pragma omp parallel for simd schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      m[i] = 0.9f * m[i] + 0.1f * grad[i];
      v[i] = 0.95f * v[i] + 0.05f * grad[i] * grad[i];
    }
  });
  double sink = 0;
  report("sum (read 1)", 4, n, [&](int) {
    // 32 partial sums a thread (two zmm registers' worth) over its whole share, so the
    // adds need not wait for each other and the loop is limited by the reads alone.
    constexpr int64_t kLanes = 32;
    double sum = 0;
#pragma omp parallel reduction(+ : sum)
    {
      const int64_t blocks = n / kLanes, t = omp_get_thread_num(), nt = omp_get_num_threads();
      float part[kLanes] = {};
      for (int64_t blk = blocks * t / nt; blk < blocks * (t + 1) / nt; ++blk)
#pragma omp simd
        for (int64_t l = 0; l < kLanes; ++l) part[l] += grad[blk * kLanes + l];
      for (float x : part) sum += x;
    }
    for (int64_t i = n / kLanes * kLanes; i < n; ++i) sum += grad[i];
    sink += sum;
  });
  report("kumiko sum_squares (gradient norm)", 4, n, [&](int) { sink += kumiko::cpu::sum_squares(grad, n); });
  report("kumiko adamw_update, no working copy", 28, n, [&](int step) {
    kumiko::cpu::adamw_update(without_copy.data(), without_copy.size(), 1e-3, 0.9, 0.95, 1e-8, 0.5, step);
  });
  report("kumiko adamw_update, bf16 working copy", 30, n, [&](int step) {
    kumiko::cpu::adamw_update(with_copy.data(), with_copy.size(), 1e-3, 0.9, 0.95, 1e-8, 0.5, step);
  });
  std::printf("(checksum %g)\n", sink + double(param[n / 3]) + double(float(work[n / 5])));
  return 0;
}
