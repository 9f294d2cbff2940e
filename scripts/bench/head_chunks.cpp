// Does a fused, token-chunked output head pay on the CPU? The LM head's three bf16
// GEMMs (logits = X Wᵀ, dX = dlogits W, dW = dlogitsᵀ X) and a pass over the logits
// standing in for the loss (read each logit, write its gradient in place), timed over
// the whole batch of N tokens at once, as kumiko runs them, and in token chunks, as a
// fused classifier would (llm.c, Liger): each chunk's logits stay in cache from the
// forward GEMM through the loss to both backward GEMMs, and dW accumulates over the
// chunks (fp32, oneDNN's sum post-op). The caches are flushed before each repetition,
// as a training step finds them. Not part of the build:
//   g++ -O2 -march=native -std=c++20 -fopenmp -Iinclude scripts/bench/head_chunks.cpp -ldnnl -o /tmp/head_chunks
//   OMP_NUM_THREADS=2 /tmp/head_chunks [reps [C [V]]]     (default 5 256 8192: tiny's head)
// Prints, for chunks of N, 1024, 512, 256 and 128 tokens (N = 2048), the best total of
// the repetitions and its parts.
#include <oneapi/dnnl/dnnl.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "bench_args.h"
#include "kumiko/core/bf16.h"

namespace {

using dt = dnnl::memory::data_type;

// A [rows, cols] operand with leading dimension ld, transposed (column-major) or not.
dnnl::memory::desc strided(int64_t rows, int64_t cols, int64_t ld, bool transposed, dt type) {
  return dnnl::memory::desc({rows, cols}, type,
                            transposed ? dnnl::memory::dims{1, ld} : dnnl::memory::dims{ld, 1});
}

struct Gemm {
  dnnl::matmul prim;
  dnnl::memory::desc a, b, c;
  Gemm(const dnnl::engine& engine, const dnnl::memory::desc& a_md, const dnnl::memory::desc& b_md,
       const dnnl::memory::desc& c_md, bool accumulate)
      : a(a_md), b(b_md), c(c_md) {
    dnnl::primitive_attr attr;
    if (accumulate) {
      dnnl::post_ops ops;
      ops.append_sum(1.0f);
      attr.set_post_ops(ops);
    }
    prim = dnnl::matmul(dnnl::matmul::primitive_desc(dnnl::matmul::desc(a, b, c), attr, engine));
  }
  void run(const dnnl::engine& engine, dnnl::stream& stream, const void* A, const void* B, void* C) const {
    dnnl::memory am(a, engine, const_cast<void*>(A)), bm(b, engine, const_cast<void*>(B)), cm(c, engine, C);
    prim.execute(stream, {{DNNL_ARG_SRC, am}, {DNNL_ARG_WEIGHTS, bm}, {DNNL_ARG_DST, cm}});
    stream.wait();
  }
};

// The loss's memory traffic, not its arithmetic: every logit read and rewritten.
void touch_rows(kumiko::bf16* logits, int64_t rows, int64_t V) {
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    kumiko::bf16* x = logits + r * V;
#pragma omp simd
    for (int64_t v = 0; v < V; ++v) x[v] = kumiko::to_bf16(kumiko::to_float(x[v]) * 0.5f - 0.25f);
  }
}


}  // namespace

int main(int argc, char** argv) {
  if (argc > 4) {
    std::fprintf(stderr, "usage: head_chunks [reps [C [V]]]\n");
    return 2;
  }
  auto arg = [&](int i, const char* what, int64_t fallback) {
    return argc > i ? bench::positive("head_chunks", argv[i], what, 1 << 20) : fallback;
  };
  const int reps = static_cast<int>(arg(1, "reps", 5));
  const int64_t C = arg(2, "C", 256), V = arg(3, "V", 8192);
  const int64_t N = 2048;
  dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  dnnl::stream stream(engine);
  std::vector<kumiko::bf16> X(N * C), W(V * C), logits(N * V), dX(N * C);
  std::vector<float> dW(V * C);
  for (size_t i = 0; i < X.size(); ++i) X[i] = kumiko::to_bf16(std::sin(static_cast<float>(i) * 0.37f) * 0.5f);
  for (size_t i = 0; i < W.size(); ++i) W[i] = kumiko::to_bf16(std::cos(static_cast<float>(i) * 0.11f) * 0.05f);
  std::vector<char> junk(96 << 20);  // larger than the last-level cache
  using ms = std::chrono::duration<double, std::milli>;
  std::printf("N %ld C %ld V %ld, best of %d\n", static_cast<long>(N), static_cast<long>(C),
              static_cast<long>(V), reps);
  for (const int64_t chunk : {N, int64_t{1024}, int64_t{512}, int64_t{256}, int64_t{128}}) {
    const Gemm fwd(engine, strided(chunk, C, C, false, dt::bf16), strided(C, V, C, true, dt::bf16),
                   strided(chunk, V, V, false, dt::bf16), false);
    const Gemm dx(engine, strided(chunk, V, V, false, dt::bf16), strided(V, C, C, false, dt::bf16),
                  strided(chunk, C, C, false, dt::bf16), false);
    const Gemm dw_first(engine, strided(V, chunk, V, true, dt::bf16), strided(chunk, C, C, false, dt::bf16),
                        strided(V, C, C, false, dt::f32), false);
    const Gemm dw_next(engine, strided(V, chunk, V, true, dt::bf16), strided(chunk, C, C, false, dt::bf16),
                       strided(V, C, C, false, dt::f32), true);
    double best = 1e30, parts[4] = {0, 0, 0, 0};
    for (int r = 0; r <= reps; ++r) {  // repetition 0 warms up
      // Both threads sweep it, so neither core's private cache keeps the operands.
#pragma omp parallel for schedule(static)
      for (size_t i = 0; i < junk.size(); i += 64) junk[i] = static_cast<char>(junk[i] + 1);
      double t[4] = {0, 0, 0, 0};
      const auto start = std::chrono::steady_clock::now();
      for (int64_t c0 = 0; c0 < N; c0 += chunk) {
        // A chunked head reuses one chunk-sized logits buffer.
        const auto q0 = std::chrono::steady_clock::now();
        fwd.run(engine, stream, X.data() + c0 * C, W.data(), logits.data());
        const auto q1 = std::chrono::steady_clock::now();
        touch_rows(logits.data(), chunk, V);
        const auto q2 = std::chrono::steady_clock::now();
        dx.run(engine, stream, logits.data(), W.data(), dX.data() + c0 * C);
        const auto q3 = std::chrono::steady_clock::now();
        (c0 == 0 ? dw_first : dw_next).run(engine, stream, logits.data(), X.data() + c0 * C, dW.data());
        const auto q4 = std::chrono::steady_clock::now();
        t[0] += ms(q1 - q0).count(), t[1] += ms(q2 - q1).count(), t[2] += ms(q3 - q2).count(),
            t[3] += ms(q4 - q3).count();
      }
      const double total = ms(std::chrono::steady_clock::now() - start).count();
      if (r > 0 && total < best) best = total, std::copy(t, t + 4, parts);
    }
    std::printf("chunk %5ld: total %7.2f ms  logits %6.2f  loss pass %6.2f  dX %6.2f  dW %6.2f  (GEMMs %6.2f)\n",
                static_cast<long>(chunk), best, parts[0], parts[1], parts[2], parts[3],
                parts[0] + parts[2] + parts[3]);
  }
  return 0;
}
