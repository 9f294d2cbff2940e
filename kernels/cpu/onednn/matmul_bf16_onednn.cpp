// oneDNN's matmul primitive for cpu::matmul_bf16: bf16 source and weights, fp32
// destination (or bf16, rounded once from the fp32 sum, with an optional bf16 bias),
// fp32 accumulation; beta = 1 is a sum post-op. Transposes are strides
// of the memory descriptors, so no operand is copied by kumiko. Primitives are made
// once per shape and kept (oneDNN JIT-compiles each one for this CPU: AMX or
// AVX512-BF16 brgemm kernels where present, reference code elsewhere). Their
// scratchpad is kumiko's (scratchpad_mode::user), one buffer for all, bounded by
// running a GEMM whose scratchpad would exceed the budget in chunks of C's rows.
#include "kernels/cpu/onednn/matmul_bf16_onednn.h"

#include <omp.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <tuple>
#include <unordered_map>

#include <oneapi/dnnl/dnnl.hpp>

#include "kumiko/core/error.h"

namespace kumiko::cpu::onednn {

namespace {

using dt = dnnl::memory::data_type;
// transposes, M, N, K, lda, ldb, ldc, sum post-op, bf16 output, bias, OpenMP threads, packed B's nb (0: B as is)
using Key =
    std::tuple<bool, bool, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, bool, bool, bool, int, int64_t>;

// One GEMM as oneDNN runs it: rows of C per call (all M, or chunks of it when the
// whole product would need more scratchpad than the budget), the primitive of a full
// chunk and of the last, shorter one, and their scratchpad descriptors.
struct Split {
  int64_t rows = 0;
  dnnl::matmul::primitive_desc full, tail;
  size_t scratch = 0;
};

struct Gemm {
  int64_t rows = 0;
  std::optional<dnnl::matmul> full, tail;
  dnnl::memory::desc full_scratch, tail_scratch;
};

struct State {
  dnnl::engine engine{dnnl::engine::kind::cpu, 0};
  dnnl::stream stream{engine};
  std::map<Key, std::optional<Gemm>> primitives;  // nullopt: oneDNN has none
  // The scratchpad every primitive shares (scratchpad_mode::user), grown to the
  // largest one run so far: what oneDNN's own global scratchpad would be, but counted.
  std::unique_ptr<uint8_t, void (*)(void*)> scratch{nullptr, std::free};
  size_t scratch_size = 0;
  size_t budget = kDefaultScratchpadBudget;
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

// B [K, N] in the packed layout (packed_b.h): oneDNN's BA16a{nb}b2a.
dnnl::memory::desc packed_desc(int64_t K, int64_t N, int64_t nb) {
  using tag = dnnl::memory::format_tag;
  const tag t = nb == 64 ? tag::BA16a64b2a : nb == 48 ? tag::BA16a48b2a : nb == 32 ? tag::BA16a32b2a : tag::BA16a16b2a;
  return dnnl::memory::desc({K, N}, dt::bf16, t);
}

// B's descriptor: strided as it lies, or packed when packed_nb > 0.
dnnl::memory::desc b_desc(int64_t K, int64_t N, bool trans_b, int64_t ldb, int64_t packed_nb) {
  return packed_nb ? packed_desc(K, N, packed_nb) : desc(K, N, trans_b, ldb, dt::bf16);
}

dnnl::matmul::primitive_desc make_pd(State& s, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K,
                                     int64_t lda, int64_t ldb, int64_t ldc, bool bias, bool sum, dt c_type,
                                     int64_t packed_nb) {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  if (sum) {
    dnnl::post_ops ops;
    ops.append_sum(1.0f);
    attr.set_post_ops(ops);
  }
  const auto bias_md = bias ? desc(1, N, false, N, dt::bf16) : dnnl::memory::desc();
  return dnnl::matmul::primitive_desc(
      dnnl::matmul::desc(desc(M, K, trans_a, lda, dt::bf16), b_desc(K, N, trans_b, ldb, packed_nb), bias_md,
                         desc(M, N, false, ldc, c_type)),
      attr, s.engine);
}

// The chunking of one GEMM: the whole of M if its scratchpad fits the budget, else
// 2, 4, 8, ... chunks of rows (the last one shorter) until their scratchpads do, down
// to one row. oneDNN sizes
// the scratchpad by the threads it will use; splitting over K across many threads
// keeps a private fp32 copy of C per thread group (Debian's oneDNN 2.6 on a
// transposed A: 12 GB for a 32000 x 2048 weight gradient at 48 threads).
// Throws dnnl::error when oneDNN has no primitive for it.
Split split_rows(State& s, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, int64_t lda, int64_t ldb,
                 int64_t ldc, bool bias, bool sum, dt c_type, int64_t packed_nb = 0) {
  for (int64_t chunks = 1;; chunks *= 2) {
    Split p;
    p.rows = (M + chunks - 1) / chunks;
    p.full = make_pd(s, trans_a, trans_b, p.rows, N, K, lda, ldb, ldc, bias, sum, c_type, packed_nb);
    p.scratch = p.full.scratchpad_desc().get_size();
    const int64_t last = M - (M - 1) / p.rows * p.rows;
    if (last != p.rows) {
      p.tail = make_pd(s, trans_a, trans_b, last, N, K, lda, ldb, ldc, bias, sum, c_type, packed_nb);
      p.scratch = std::max(p.scratch, p.tail.scratchpad_desc().get_size());
    }
    if (p.scratch <= s.budget || p.rows == 1) return p;
  }
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

bool built() { return true; }

std::string kernel_name() {
  static const std::string name = []() -> std::string {
    if (!available()) return "";
    constexpr int64_t n = 256;
    const dnnl::matmul::primitive_desc pd(
        dnnl::matmul::desc(desc(n, n, false, n, dt::bf16), desc(n, n, true, n, dt::bf16), desc(n, n, false, n, dt::f32)),
        state().engine);
    return pd.impl_info_str();
  }();
  return name;
}

Chunking chunking(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, int64_t lda, int64_t ldb, int64_t ldc,
                  bool bias, bool accumulate, bool bf16_out) {
  if (M <= 0 || N <= 0 || K <= 0) return {};
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  try {
    const Split p =
        split_rows(s, trans_a, trans_b, M, N, K, lda, ldb, ldc, bias, accumulate, bf16_out ? dt::bf16 : dt::f32);
    return {p.rows, p.scratch};
  } catch (const dnnl::error&) {
    return {};  // the emulated GEMM runs it
  }
}

size_t scratchpad_in_use() {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  return s.scratch_size;
}

void set_scratchpad_budget(size_t bytes) {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  s.budget = bytes;
  s.primitives.clear();  // chunked for the old budget
  s.scratch.reset();
  s.scratch_size = 0;
}

namespace {

// C (fp32 or bf16, per c_type) = A B [+ bias] [+ C]: one primitive per shape, strides,
// output type, epilogue and thread count, made on first use and kept.
// With packed_nb > 0, B is in the packed layout of that nb (trans_b and ldb unused).
bool run(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const bf16* A, int64_t lda, const bf16* B,
         int64_t ldb, const bf16* bias, bool sum, dt c_type, void* C, int64_t ldc, int64_t packed_nb = 0) {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  if (packed_nb) trans_b = false, ldb = 0;
  const Key key{trans_a, trans_b, M,   N, K, lda, ldb, ldc, sum, c_type == dt::bf16, bias != nullptr,
                omp_get_max_threads(), packed_nb};
  auto it = s.primitives.find(key);
  if (it == s.primitives.end()) {
    std::optional<Gemm> g;
    try {
      const Split p =
          split_rows(s, trans_a, trans_b, M, N, K, lda, ldb, ldc, bias != nullptr, sum, c_type, packed_nb);
      // A packed B only where the brgemm kernels take it (not a slower implementation).
      if (packed_nb && (std::string(p.full.impl_info_str()).rfind("brg", 0) != 0 ||
                        (M % p.rows != 0 && std::string(p.tail.impl_info_str()).rfind("brg", 0) != 0)))
        throw dnnl::error(dnnl_unimplemented, "no brgemm kernel for this packed B");
      g.emplace();
      g->rows = p.rows;
      g->full.emplace(p.full);
      g->full_scratch = p.full.scratchpad_desc();
      if (M % p.rows != 0) {
        g->tail.emplace(p.tail);
        g->tail_scratch = p.tail.scratchpad_desc();
      }
      if (p.scratch > s.scratch_size) {
        const size_t bytes = (p.scratch + 4095) / 4096 * 4096;
        auto* grown = static_cast<uint8_t*>(std::aligned_alloc(4096, bytes));
        KUMIKO_CHECK(grown != nullptr, "oneDNN: cannot allocate a ", bytes, "-byte GEMM scratchpad");
        s.scratch.reset(grown);
        s.scratch_size = p.scratch;
      }
    } catch (const dnnl::error& e) {
      g.reset();
      if (!packed_nb)  // a packed B falls back to B as it is, quietly
        std::fprintf(stderr,
                     "kumiko: oneDNN has no bf16 matmul for M=%ld N=%ld K=%ld (%s); that shape uses the emulated GEMM\n",
                     static_cast<long>(M), static_cast<long>(N), static_cast<long>(K), e.what());
    }
    it = s.primitives.emplace(key, std::move(g)).first;
  }
  if (!it->second) return false;
  const Gemm& g = *it->second;
  const size_t c_size = c_type == dt::bf16 ? sizeof(bf16) : sizeof(float);
  for (int64_t m0 = 0; m0 < M; m0 += g.rows) {
    // Rows m0.. of C: A's rows (its columns when stored transposed), C's rows.
    const int64_t rows = std::min(g.rows, M - m0);
    const bool last = rows != g.rows;
    const bf16* a_rows = A + (trans_a ? m0 : m0 * lda);
    uint8_t* c_rows = static_cast<uint8_t*>(C) + static_cast<size_t>(m0 * ldc) * c_size;
    std::unordered_map<int, dnnl::memory> args{
        {DNNL_ARG_SRC, dnnl::memory(desc(rows, K, trans_a, lda, dt::bf16), s.engine, const_cast<bf16*>(a_rows))},
        {DNNL_ARG_WEIGHTS, dnnl::memory(b_desc(K, N, trans_b, ldb, packed_nb), s.engine, const_cast<bf16*>(B))},
        {DNNL_ARG_DST, dnnl::memory(desc(rows, N, false, ldc, c_type), s.engine, c_rows)},
        {DNNL_ARG_SCRATCHPAD, dnnl::memory(last ? g.tail_scratch : g.full_scratch, s.engine, s.scratch.get())}};
    if (bias) args.emplace(DNNL_ARG_BIAS, dnnl::memory(desc(1, N, false, N, dt::bf16), s.engine, const_cast<bf16*>(bias)));
    (last ? *g.tail : *g.full).execute(s.stream, args);
  }
  s.stream.wait();
  return true;
}

}  // namespace

PackedB packed_b(int64_t M, int64_t N, int64_t K, bool bf16_out) {
  if (!available() || M <= 0 || N <= 0 || K <= 0) return {};
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  try {
    const dnnl::matmul::primitive_desc pd(
        dnnl::matmul::desc(desc(M, K, false, K, dt::bf16), dnnl::memory::desc({K, N}, dt::bf16, dnnl::memory::format_tag::any),
                           desc(M, N, false, N, bf16_out ? dt::bf16 : dt::f32)),
        s.engine);
    if (std::string(pd.impl_info_str()).rfind("brg", 0) != 0) return {};
    for (const int64_t nb : {64, 48, 32, 16})
      if (pd.weights_desc() == packed_desc(K, N, nb)) return packed_b_layout(K, N, nb);
  } catch (const dnnl::error&) {
  }
  return {};
}

bool matmul_packed(int64_t M, const bf16* A, int64_t lda, const PackedB& B, const bf16* Bp, const bf16* bias,
                   bool accumulate, float* C, int64_t ldc) {
  return B && run(false, false, M, B.N, B.K, A, lda, Bp, 0, bias, accumulate, dt::f32, C, ldc, B.nb);
}

bool matmul_packed(int64_t M, const bf16* A, int64_t lda, const PackedB& B, const bf16* Bp, const bf16* bias,
                   bool accumulate, bf16* C, int64_t ldc) {
  return B && run(false, false, M, B.N, B.K, A, lda, Bp, 0, bias, accumulate, dt::bf16, C, ldc, B.nb);
}

bool matmul(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const bf16* A, int64_t lda, const bf16* B,
            int64_t ldb, const bf16* bias, bool accumulate, float* C, int64_t ldc) {
  return run(trans_a, trans_b, M, N, K, A, lda, B, ldb, bias, accumulate, dt::f32, C, ldc);
}

bool matmul(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const bf16* A, int64_t lda, const bf16* B,
            int64_t ldb, const bf16* bias, bool accumulate, bf16* C, int64_t ldc) {
  return run(trans_a, trans_b, M, N, K, A, lda, B, ldb, bias, accumulate, dt::bf16, C, ldc);
}

}  // namespace kumiko::cpu::onednn
