// Standalone timing of oneDNN's bf16 matmul with B as kumiko passes it (plain or
// transposed strides, so oneDNN's brgemm packs B into its pair-interleaved blocks
// inside every call: `jit_brgemm_matmul_copy_b_*` in a profile) against B reordered
// into the blocked layout the primitive asks for (`format_tag::any`): the reorder
// and the matmul per call, and the matmul alone (what weights kept packed between
// steps would cost). Not part of the build:
//   g++ -O2 -std=c++20 -fopenmp scripts/bench/onednn_packing.cpp -ldnnl -o /tmp/onednn_packing
//   OMP_NUM_THREADS=2 /tmp/onednn_packing [reps]
// Shapes: the tiny and 124M benchmark models' GEMMs (docs/performance.md), bf16 out;
// the last two lines sum each model's over one training step (run it at
// OMP_NUM_THREADS=1 and 2 to see how the GEMMs alone scale).
#include <oneapi/dnnl/dnnl.hpp>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "bench_args.h"

namespace {

using dt = dnnl::memory::data_type;

dnnl::memory::desc strided(int64_t rows, int64_t cols, bool transposed, dt type) {
  const int64_t ld = transposed ? rows : cols;
  return dnnl::memory::desc({rows, cols}, type,
                            transposed ? dnnl::memory::dims{1, ld} : dnnl::memory::dims{ld, 1});
}

struct Shape {
  const char* name;
  bool trans_a, trans_b;
  int64_t M, N, K;
  int per_step;  // calls of this shape in one training step of its model (one per layer, or one)
};

}  // namespace

int main(int argc, char** argv) {
  if (argc > 2) {
    std::fprintf(stderr, "usage: onednn_packing [reps]\n");
    return 2;
  }
  const int reps =
      argc > 1 ? static_cast<int>(bench::positive("onednn_packing", argv[1], "reps", 1 << 20)) : 20;
  dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  dnnl::stream stream(engine);
  // Forward X W^T (B transposed), input gradient dY W (B plain), weight gradient
  // dY^T X (A transposed, B plain); M = tokens except in the weight gradient.
  // Every GEMM of each model's training step (tiny: 4 layers, 124M: 12, each with qkv,
  // attention projection, fc1 and fc2, three GEMMs apiece; the tied head's three once),
  // so each model's sum over per_step is its step's GEMM time.
  const std::vector<Shape> shapes{
      {"tiny fwd qkv", false, true, 2048, 768, 256, 4},      {"tiny fwd proj", false, true, 2048, 256, 256, 4},
      {"tiny fwd fc1", false, true, 2048, 1024, 256, 4},     {"tiny fwd fc2", false, true, 2048, 256, 1024, 4},
      {"tiny fwd head", false, true, 2048, 8192, 256, 1},    {"tiny dX qkv", false, false, 2048, 256, 768, 4},
      {"tiny dX proj", false, false, 2048, 256, 256, 4},     {"tiny dX fc1", false, false, 2048, 256, 1024, 4},
      {"tiny dX fc2", false, false, 2048, 1024, 256, 4},     {"tiny dX head", false, false, 2048, 256, 8192, 1},
      {"tiny dW qkv", true, false, 768, 256, 2048, 4},       {"tiny dW proj", true, false, 256, 256, 2048, 4},
      {"tiny dW fc1", true, false, 1024, 256, 2048, 4},      {"tiny dW fc2", true, false, 256, 1024, 2048, 4},
      {"tiny dW head", true, false, 8192, 256, 2048, 1},     {"124M fwd qkv", false, true, 256, 2304, 768, 12},
      {"124M fwd proj", false, true, 256, 768, 768, 12},     {"124M fwd fc1", false, true, 256, 3072, 768, 12},
      {"124M fwd fc2", false, true, 256, 768, 3072, 12},     {"124M fwd head", false, true, 256, 50304, 768, 1},
      {"124M dX qkv", false, false, 256, 768, 2304, 12},     {"124M dX proj", false, false, 256, 768, 768, 12},
      {"124M dX fc1", false, false, 256, 768, 3072, 12},     {"124M dX fc2", false, false, 256, 3072, 768, 12},
      {"124M dX head", false, false, 256, 768, 50304, 1},    {"124M dW qkv", true, false, 2304, 768, 256, 12},
      {"124M dW proj", true, false, 768, 768, 256, 12},      {"124M dW fc1", true, false, 3072, 768, 256, 12},
      {"124M dW fc2", true, false, 768, 3072, 256, 12},      {"124M dW head", true, false, 50304, 768, 256, 1}};
  double step_as_is[2] = {0, 0}, step_packed[2] = {0, 0};  // tiny, 124M
  std::mt19937 rng(17);
  std::uniform_int_distribution<uint16_t> mantissa(0, 127);
  auto random_bf16 = [&](int64_t n) {  // values in [1, 2) with a random 7-bit mantissa
    std::vector<uint16_t> v(n);
    for (auto& x : v) x = static_cast<uint16_t>(0x3f80 | mantissa(rng));
    return v;
  };
  std::printf("%-14s %22s %22s %22s %10s\n", "GEMM", "B as is: ms (GF/s)", "reorder + packed", "packed only",
              "reorder");
  for (const Shape& s : shapes) {
    std::vector<uint16_t> A = random_bf16(s.M * s.K), B = random_bf16(s.K * s.N), C(s.M * s.N);
    const auto a_md = strided(s.M, s.K, s.trans_a, dt::bf16), b_md = strided(s.K, s.N, s.trans_b, dt::bf16),
               c_md = strided(s.M, s.N, false, dt::bf16);
    const dnnl::matmul::primitive_desc as_is_pd(dnnl::matmul::desc(a_md, b_md, c_md), engine);
    const dnnl::memory::desc b_any({s.K, s.N}, dt::bf16, dnnl::memory::format_tag::any);
    const dnnl::matmul::primitive_desc packed_pd(dnnl::matmul::desc(a_md, b_any, c_md), engine);
    const dnnl::matmul as_is(as_is_pd), packed(packed_pd);
    dnnl::memory a(a_md, engine, A.data()), b(b_md, engine, B.data()), c(c_md, engine, C.data());
    dnnl::memory b_packed(packed_pd.weights_desc(), engine);
    const dnnl::reorder pack(b, b_packed);
    auto ms = [&](auto&& f) {  // mean of reps calls after 3 warm-up calls
      for (int i = 0; i < 3; ++i) f();
      stream.wait();
      const auto t0 = std::chrono::steady_clock::now();
      for (int i = 0; i < reps; ++i) f();
      stream.wait();
      return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() / reps;
    };
    const double t_as_is = ms([&] {
      as_is.execute(stream, {{DNNL_ARG_SRC, a}, {DNNL_ARG_WEIGHTS, b}, {DNNL_ARG_DST, c}});
    });
    const double t_both = ms([&] {
      pack.execute(stream, b, b_packed);
      packed.execute(stream, {{DNNL_ARG_SRC, a}, {DNNL_ARG_WEIGHTS, b_packed}, {DNNL_ARG_DST, c}});
    });
    const double t_packed = ms([&] {
      packed.execute(stream, {{DNNL_ARG_SRC, a}, {DNNL_ARG_WEIGHTS, b_packed}, {DNNL_ARG_DST, c}});
    });
    const double t_pack = ms([&] { pack.execute(stream, b, b_packed); });
    const double gflop = 2.0 * s.M * s.N * s.K / 1e9;
    std::printf("%-14s %11.3f (%5.0f) %15.3f (%5.0f) %15.3f (%5.0f) %10.3f\n", s.name, t_as_is, gflop / t_as_is * 1e3,
                t_both, gflop / t_both * 1e3, t_packed, gflop / t_packed * 1e3, t_pack);
    const int model = s.name[0] == 't' ? 0 : 1;
    step_as_is[model] += s.per_step * t_as_is;
    step_packed[model] += s.per_step * t_packed;
  }
  for (int model = 0; model < 2; ++model)
    std::printf("%s step's GEMMs (each shape times its calls a step): %.1f ms with B as is, %.1f ms packed only\n",
                model == 0 ? "tiny" : "124M", step_as_is[model], step_packed[model]);
  return 0;
}
