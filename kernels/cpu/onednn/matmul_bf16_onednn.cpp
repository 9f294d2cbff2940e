// oneDNN's matmul primitive for cpu::matmul_bf16: bf16 source and weights, fp32
// destination (or bf16, rounded once from the fp32 sum, with an optional bf16 bias),
// fp32 accumulation; beta = 1 is a sum post-op. Transposes are strides
// of the memory descriptors, so no operand is copied by kumiko. Primitives are made
// once per shape and kept (oneDNN JIT-compiles each one for this CPU: AMX or
// AVX512-BF16 brgemm kernels where present, reference code elsewhere).
#include "kernels/cpu/onednn/matmul_bf16_onednn.h"

#include <cstdio>
#include <map>
#include <mutex>
#include <optional>
#include <tuple>
#include <unordered_map>

#include <oneapi/dnnl/dnnl.hpp>

#include "kumiko/core/error.h"

namespace kumiko::cpu::onednn {

namespace {

using dt = dnnl::memory::data_type;
// transposes, M, N, K, lda, ldb, ldc, sum post-op, bf16 output, bias
using Key = std::tuple<bool, bool, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, bool, bool, bool>;

struct State {
  dnnl::engine engine{dnnl::engine::kind::cpu, 0};
  dnnl::stream stream{engine};
  std::map<Key, std::optional<dnnl::matmul>> primitives;  // nullopt: oneDNN has none
  std::mutex mutex;
};

State& state() {
  static State s;
  return s;
}

dnnl::memory::desc desc(int64_t rows, int64_t cols, bool transposed, int64_t ld, dt type) {
  // Logical [rows, cols]; stored row-major with leading dimension ld, or transposed
  // (stored [cols, rows]).
  const dnnl::memory::dims strides = transposed ? dnnl::memory::dims{1, ld} : dnnl::memory::dims{ld, 1};
  return dnnl::memory::desc({rows, cols}, type, strides);
}

}  // namespace

// oneDNN has bf16 matmuls only on CPUs with AVX-512 or newer (2.6: avx512_core; its
// reference code too refuses bf16 elsewhere): asked once with a 1 x 1 x 1 primitive.
bool available() {
  static const bool ok = [] {
    try {
      const auto md = [](dt type) { return dnnl::memory::desc({1, 1}, type, dnnl::memory::dims{1, 1}); };
      const dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(md(dt::bf16), md(dt::bf16), md(dt::f32)),
                                            state().engine);
      return true;
    } catch (const dnnl::error&) {
      return false;
    }
  }();
  return ok;
}

namespace {

// C (fp32 or bf16, per c_type) = A B [+ bias] [+ C]: one primitive per shape, strides,
// output type and epilogue, made on first use and kept.
bool run(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const bf16* A, int64_t lda, const bf16* B,
         int64_t ldb, const bf16* bias, bool sum, dt c_type, void* C, int64_t ldc) {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  const auto a_md = desc(M, K, trans_a, lda, dt::bf16);
  const auto b_md = desc(K, N, trans_b, ldb, dt::bf16);
  const auto c_md = desc(M, N, false, ldc, c_type);
  const auto bias_md = bias ? desc(1, N, false, N, dt::bf16) : dnnl::memory::desc();
  const Key key{trans_a, trans_b, M, N, K, lda, ldb, ldc, sum, c_type == dt::bf16, bias != nullptr};
  auto it = s.primitives.find(key);
  if (it == s.primitives.end()) {
    dnnl::primitive_attr attr;
    if (sum) {
      dnnl::post_ops ops;
      ops.append_sum(1.0f);
      attr.set_post_ops(ops);
    }
    std::optional<dnnl::matmul> prim;
    try {
      const dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(a_md, b_md, bias_md, c_md), attr, s.engine);
      prim.emplace(pd);
    } catch (const dnnl::error& e) {
      std::fprintf(stderr, "kumiko: oneDNN has no bf16 matmul for M=%ld N=%ld K=%ld (%s); that shape uses the emulated GEMM\n",
                   static_cast<long>(M), static_cast<long>(N), static_cast<long>(K), e.what());
    }
    it = s.primitives.emplace(key, std::move(prim)).first;
  }
  if (!it->second) return false;
  dnnl::memory a(a_md, s.engine, const_cast<bf16*>(A));
  dnnl::memory b(b_md, s.engine, const_cast<bf16*>(B));
  dnnl::memory c(c_md, s.engine, C);
  std::unordered_map<int, dnnl::memory> args{{DNNL_ARG_SRC, a}, {DNNL_ARG_WEIGHTS, b}, {DNNL_ARG_DST, c}};
  if (bias) args.emplace(DNNL_ARG_BIAS, dnnl::memory(bias_md, s.engine, const_cast<bf16*>(bias)));
  it->second->execute(s.stream, args);
  s.stream.wait();
  return true;
}

}  // namespace

bool matmul(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const bf16* A, int64_t lda, const bf16* B,
            int64_t ldb, const bf16* bias, bool accumulate, float* C, int64_t ldc) {
  return run(trans_a, trans_b, M, N, K, A, lda, B, ldb, bias, accumulate, dt::f32, C, ldc);
}

bool matmul(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const bf16* A, int64_t lda, const bf16* B,
            int64_t ldb, const bf16* bias, bool accumulate, bf16* C, int64_t ldc) {
  return run(trans_a, trans_b, M, N, K, A, lda, B, ldb, bias, accumulate, dt::bf16, C, ldc);
}

}  // namespace kumiko::cpu::onednn
