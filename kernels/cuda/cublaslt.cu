// cuBLASLt path of kumiko::cuda::gemm (contract: cublaslt.cuh).
//
// Row-major C[M, N] = op(A) op(B) is column-major C^T[N, M] = op(B)^T op(A)^T, so cuBLASLt
// gets our B as its A and our A as its B with m = N, n = M, k = K; a row-major [r, c]
// operand is a column-major [c, r] one with ld = c, and the transpose flags follow:
//   our B: NT stored [N, K] -> cuBLASLt A (K x N, ld K) with OP_T;
//          NN/TN stored [K, N] -> (N x K, ld N) with OP_N;
//   our A: NN/NT stored [M, K] -> cuBLASLt B (K x M, ld K) with OP_N;
//          TN stored [K, M] -> (M x K, ld M) with OP_T;
//   C = D: (N x M, ld N); bias[n] runs along D's rows, as CUBLASLT_EPILOGUE_BIAS wants.
// Compute type CUBLAS_COMPUTE_32F with fp32 scale for every pair (no TF32 for fp32).
// alpha = 1, beta = accumulate ? 1 : 0, C and D the same matrix (in-place).
//
// Epilogues: bias -> CUBLASLT_EPILOGUE_BIAS; bias_gelu -> GELU_BIAS (no `pre`) or
// GELU_AUX_BIAS with aux = pre, aux ld = N (cuBLASLt's GELU is the tanh approximation).
// Where cuBLASLt cannot do it, a small elementwise kernel of ours finishes the epilogue
// after a plain matmul:
//   - <bf16, float>: cuBLASLt's bias has the output's type (fp32), ours is bf16, so the
//     bias (and GELU) are added by our kernel;
//   - bias_gelu with `pre` and N % 8 != 0 (the aux ld must be a multiple of 8): cuBLASLt
//     adds the bias, our kernel copies pre = C and applies GELU (for bf16 the GELU then
//     sees the bf16-rounded pre-activation);
//   - fp32 bias_gelu: cuBLASLt adds the bias, our kernel applies an exact-fp32 GELU;
//   - a fused epilogue for which the heuristic finds no algorithm: plain matmul + ours.
// K = 0 (nothing for cuBLASLt to multiply) is handed to kumiko::cuda::gemm.
//
// Plans (descriptors, layouts, chosen algorithm) are cached per (types, layout, M, N, K,
// epilogue, accumulate, has pre, pointer alignments), so a training step queries the
// heuristic only on its first call; later calls only update the bias/aux pointers.
// Calls are serialized by a mutex (the cached descriptors are updated per call); the one
// workspace is shared, so calls on different streams must not run concurrently.
#include "kernels/cuda/gelu.cuh"
#include "kernels/cuda/cublaslt.cuh"

#include <cublasLt.h>

#include <algorithm>
#include <mutex>
#include <type_traits>
#include <unordered_map>

#include "kumiko/core/error.h"

namespace kumiko::cuda {

namespace {

void check_lt(cublasStatus_t status, const char* call) {
  if (status == CUBLAS_STATUS_SUCCESS) return;
  throw Error(detail::concat("cuBLASLt error in ", call, ": ", cublasLtGetStatusName(status), " (",
                             cublasLtGetStatusString(status), ")"));
}
#define KUMIKO_CUBLASLT_CHECK(call) check_lt((call), #call)

template <typename T>
constexpr cudaDataType_t data_type() {
  return std::is_same_v<T, float> ? CUDA_R_32F : CUDA_R_16BF;
}

// log2 of the largest power of two (at most 256) dividing the address; 8 for nullptr.
uint32_t align_log2(const void* p) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  uint32_t k = 0;
  while (k < 8 && (a >> k & 1u) == 0) ++k;
  return k;
}


// The epilogue steps cuBLASLt did not do: C already holds acc (+ C) (+ bias when
// !add_bias); adds bias[n] and/or applies GELU, writing pre first.
template <typename Tin, typename Tout>
__global__ void finish_epilogue_kernel(Tout* __restrict__ C, Tout* __restrict__ pre, const Tin* __restrict__ bias,
                                       int64_t total, int64_t N, bool add_bias, bool gelu) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total;
       i += int64_t{gridDim.x} * blockDim.x) {
    float v = to_f(C[i]);
    if (add_bias) v += to_f(bias[i % N]);
    if (gelu) {
      if (pre) pre[i] = from_f<Tout>(v);
      v = gelu_tanh(v);
    }
    C[i] = from_f<Tout>(v);
  }
}

struct Key {
  cudaDataType_t tin, tout;
  Layout layout;
  Epilogue epilogue;
  bool accumulate, has_pre;
  int64_t M, N, K;
  uint32_t align;  // 4 bits per pointer: A, B, C, bias, pre (log2 of their alignment)
  bool operator==(const Key& o) const {
    return tin == o.tin && tout == o.tout && layout == o.layout && epilogue == o.epilogue &&
           accumulate == o.accumulate && has_pre == o.has_pre && M == o.M && N == o.N && K == o.K &&
           align == o.align;
  }
};

struct KeyHash {
  size_t operator()(const Key& k) const {
    uint64_t h = 1469598103934665603ull;  // FNV-1a over the fields
    auto mix = [&h](uint64_t v) { h = (h ^ v) * 1099511628211ull; };
    mix(static_cast<uint64_t>(k.tin));
    mix(static_cast<uint64_t>(k.tout));
    mix(static_cast<uint64_t>(k.layout));
    mix(static_cast<uint64_t>(k.epilogue));
    mix(uint64_t{k.accumulate} << 1 | uint64_t{k.has_pre});
    mix(static_cast<uint64_t>(k.M));
    mix(static_cast<uint64_t>(k.N));
    mix(static_cast<uint64_t>(k.K));
    mix(k.align);
    return static_cast<size_t>(h);
  }
};

struct Plan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;  // cuBLASLt's A (our B), B (our A), C = D
  cublasLtMatmulAlgo_t algo{};
  bool lt_bias = false, lt_aux = false;      // pointers cuBLASLt's epilogue uses
  bool own_bias = false, own_gelu = false;   // left to finish_epilogue_kernel

  Plan() = default;
  Plan(const Plan&) = delete;
  Plan& operator=(const Plan&) = delete;
  ~Plan() {  // statuses ignored: nothing sensible to do with them in a destructor
    if (c) cublasLtMatrixLayoutDestroy(c);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (desc) cublasLtMatmulDescDestroy(desc);
  }
};

struct Preference {
  cublasLtMatmulPreference_t p = nullptr;
  Preference() { KUMIKO_CUBLASLT_CHECK(cublasLtMatmulPreferenceCreate(&p)); }
  ~Preference() { cublasLtMatmulPreferenceDestroy(p); }
  Preference(const Preference&) = delete;
  Preference& operator=(const Preference&) = delete;
  void set(cublasLtMatmulPreferenceAttributes_t attr, const void* value, size_t bytes) {
    KUMIKO_CUBLASLT_CHECK(cublasLtMatmulPreferenceSetAttribute(p, attr, value, bytes));
  }
};

void set_desc(cublasLtMatmulDesc_t desc, cublasLtMatmulDescAttributes_t attr, const void* value, size_t bytes) {
  KUMIKO_CUBLASLT_CHECK(cublasLtMatmulDescSetAttribute(desc, attr, value, bytes));
}

}  // namespace

struct CublasLt::Impl {
  cublasLtHandle_t handle = nullptr;
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
  std::mutex mutex;
  std::unordered_map<Key, std::unique_ptr<Plan>, KeyHash> plans;

  // A plan whose cuBLASLt epilogue is `epi`, or nullptr when the heuristic has no
  // algorithm for it. bias/pre are the first call's pointers (the heuristic reads their
  // alignment).
  std::unique_ptr<Plan> try_plan(const Key& key, cublasLtEpilogue_t epi, const void* bias, void* pre) {
    auto plan = std::make_unique<Plan>();
    KUMIKO_CUBLASLT_CHECK(cublasLtMatmulDescCreate(&plan->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const cublasOperation_t op_a = key.layout == Layout::NT ? CUBLAS_OP_T : CUBLAS_OP_N;  // on our B
    const cublasOperation_t op_b = key.layout == Layout::TN ? CUBLAS_OP_T : CUBLAS_OP_N;  // on our A
    set_desc(plan->desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_a, sizeof op_a);
    set_desc(plan->desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_b, sizeof op_b);
    set_desc(plan->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi);
    plan->lt_bias = epi != CUBLASLT_EPILOGUE_DEFAULT;
    plan->lt_aux = epi == CUBLASLT_EPILOGUE_GELU_AUX_BIAS;
    if (plan->lt_bias) set_desc(plan->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias);
    if (plan->lt_aux) {
      const int64_t ld = key.N;
      set_desc(plan->desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &pre, sizeof pre);
      set_desc(plan->desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &ld, sizeof ld);
    }

    const auto M = static_cast<uint64_t>(key.M), N = static_cast<uint64_t>(key.N),
               K = static_cast<uint64_t>(key.K);
    if (key.layout == Layout::NT)
      KUMIKO_CUBLASLT_CHECK(cublasLtMatrixLayoutCreate(&plan->a, key.tin, K, N, key.K));
    else
      KUMIKO_CUBLASLT_CHECK(cublasLtMatrixLayoutCreate(&plan->a, key.tin, N, K, key.N));
    if (key.layout == Layout::TN)
      KUMIKO_CUBLASLT_CHECK(cublasLtMatrixLayoutCreate(&plan->b, key.tin, M, K, key.M));
    else
      KUMIKO_CUBLASLT_CHECK(cublasLtMatrixLayoutCreate(&plan->b, key.tin, K, M, key.K));
    KUMIKO_CUBLASLT_CHECK(cublasLtMatrixLayoutCreate(&plan->c, key.tout, N, M, key.N));

    Preference pref;
    const uint64_t ws = workspace_bytes;
    pref.set(CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws);
    const uint32_t align_a = 1u << (key.align >> 4 & 15), align_b = 1u << (key.align & 15),
                   align_c = 1u << (key.align >> 8 & 15);  // cuBLASLt's A is our B and vice versa
    pref.set(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align_a, sizeof align_a);
    pref.set(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align_b, sizeof align_b);
    pref.set(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align_c, sizeof align_c);
    pref.set(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align_c, sizeof align_c);

    cublasLtMatmulHeuristicResult_t result{};
    int found = 0;
    const cublasStatus_t status = cublasLtMatmulAlgoGetHeuristic(handle, plan->desc, plan->a, plan->b, plan->c,
                                                                 plan->c, pref.p, 1, &result, &found);
    if (status == CUBLAS_STATUS_NOT_SUPPORTED || (status == CUBLAS_STATUS_SUCCESS && found == 0)) return nullptr;
    check_lt(status, "cublasLtMatmulAlgoGetHeuristic");
    plan->algo = result.algo;
    return plan;
  }

  std::unique_ptr<Plan> make_plan(const Key& key, const void* bias, void* pre) {
    // What cuBLASLt can fuse; the rest goes to finish_epilogue_kernel.
    cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_DEFAULT;
    bool own_bias = false, own_gelu = false;
    const bool bias_native = key.tin == key.tout;  // cuBLASLt's bias has the output type
    if (key.epilogue == Epilogue::bias) {
      if (bias_native)
        epi = CUBLASLT_EPILOGUE_BIAS;
      else
        own_bias = true;
    } else if (key.epilogue == Epilogue::bias_gelu) {
      if (!bias_native) {
        own_bias = own_gelu = true;
      } else if (key.tout == CUDA_R_32F) {
        // fp32: cuBLASLt's fused GELU may use a hardware tanh approximation (~2^-11
        // relative), too coarse for the fp32 path's 1e-5 parity; ours uses tanhf.
        epi = CUBLASLT_EPILOGUE_BIAS;
        own_gelu = true;
      } else if (!key.has_pre) {
        epi = CUBLASLT_EPILOGUE_GELU_BIAS;
      } else if (key.N % 8 == 0) {
        epi = CUBLASLT_EPILOGUE_GELU_AUX_BIAS;
      } else {
        epi = CUBLASLT_EPILOGUE_BIAS;
        own_gelu = true;
      }
    }
    auto plan = try_plan(key, epi, bias, pre);
    if (!plan && epi != CUBLASLT_EPILOGUE_DEFAULT) {
      plan = try_plan(key, CUBLASLT_EPILOGUE_DEFAULT, bias, pre);
      own_bias = key.epilogue != Epilogue::none;
      own_gelu = key.epilogue == Epilogue::bias_gelu;
    }
    KUMIKO_CHECK(plan != nullptr, "cuBLASLt has no algorithm for M=", key.M, " N=", key.N, " K=", key.K,
                 " (cublasLtMatmulAlgoGetHeuristic returned none)");
    plan->own_bias = own_bias;
    plan->own_gelu = own_gelu;
    return plan;
  }
};

CublasLt::CublasLt(size_t workspace_bytes) : impl_(std::make_unique<Impl>()) {
  KUMIKO_CUBLASLT_CHECK(cublasLtCreate(&impl_->handle));
  if (workspace_bytes > 0) {
    const cudaError_t st = cudaMalloc(&impl_->workspace, workspace_bytes);
    if (st != cudaSuccess) {
      cublasLtDestroy(impl_->handle);
      KUMIKO_CUDA_CHECK(st);
    }
  }
  impl_->workspace_bytes = workspace_bytes;
}

CublasLt::~CublasLt() {
  impl_->plans.clear();
  if (impl_->workspace) cudaFree(impl_->workspace);
  cublasLtDestroy(impl_->handle);
}

template <typename Tin, typename Tout>
void CublasLt::gemm(const GemmArgs& args, const Tin* A, const Tin* B, Tout* C, const Tin* bias, Tout* pre,
                    cudaStream_t stream) {
  static_assert((std::is_same_v<Tin, float> && std::is_same_v<Tout, float>) || std::is_same_v<Tin, bf16>,
                "gemm runs <float, float>, <bf16, bf16> and <bf16, float>");
  KUMIKO_CHECK(args.M >= 0 && args.N >= 0 && args.K >= 0, "cuBLASLt gemm: bad shape M=", args.M, " N=", args.N,
               " K=", args.K);
  KUMIKO_CHECK(args.epilogue == Epilogue::none || bias != nullptr, "cuBLASLt gemm: the epilogue needs a bias");
  KUMIKO_CHECK(!(args.accumulate && args.epilogue == Epilogue::bias_gelu),
               "cuBLASLt gemm: accumulate is only defined with Epilogue::none or bias");
  if (args.M == 0 || args.N == 0) return;
  if (args.K == 0) {
    kumiko::cuda::gemm<Tin, Tout>(args, A, B, C, bias, pre, stream);
    return;
  }
  if (args.epilogue != Epilogue::bias_gelu) pre = nullptr;  // unused: keep it out of the key
  if (args.epilogue == Epilogue::none) bias = nullptr;

  const Key key{data_type<Tin>(),
                data_type<Tout>(),
                args.layout,
                args.epilogue,
                args.accumulate,
                pre != nullptr,
                args.M,
                args.N,
                args.K,
                align_log2(A) | align_log2(B) << 4 | align_log2(C) << 8 | align_log2(bias) << 12 |
                    align_log2(pre) << 16};

  std::lock_guard<std::mutex> lock(impl_->mutex);
  auto it = impl_->plans.find(key);
  if (it == impl_->plans.end()) it = impl_->plans.emplace(key, impl_->make_plan(key, bias, pre)).first;
  Plan& plan = *it->second;
  if (plan.lt_bias) set_desc(plan.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias);
  if (plan.lt_aux) set_desc(plan.desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &pre, sizeof pre);

  const float alpha = 1.0f, beta = args.accumulate ? 1.0f : 0.0f;
  KUMIKO_CUBLASLT_CHECK(cublasLtMatmul(impl_->handle, plan.desc, &alpha, B, plan.a, A, plan.b, &beta, C, plan.c, C,
                                       plan.c, &plan.algo, impl_->workspace, impl_->workspace_bytes, stream));
  if (plan.own_bias || plan.own_gelu) {
    constexpr int kThreads = 256;
    const int64_t total = args.M * args.N;
    const auto blocks = static_cast<unsigned>(std::min<int64_t>(ceil_div(total, kThreads), int64_t{1} << 20));
    finish_epilogue_kernel<Tin, Tout><<<blocks, kThreads, 0, stream>>>(C, pre, bias, total, args.N, plan.own_bias,
                                                                       plan.own_gelu);
    KUMIKO_CUDA_LAUNCH_CHECK();
  }
}

template void CublasLt::gemm<float, float>(const GemmArgs&, const float*, const float*, float*, const float*, float*,
                                           cudaStream_t);
template void CublasLt::gemm<bf16, bf16>(const GemmArgs&, const bf16*, const bf16*, bf16*, const bf16*, bf16*,
                                         cudaStream_t);
template void CublasLt::gemm<bf16, float>(const GemmArgs&, const bf16*, const bf16*, float*, const bf16*, float*,
                                          cudaStream_t);

}  // namespace kumiko::cuda
