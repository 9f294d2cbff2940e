// bf16 GEMMs (include/kumiko/ops/matmul_bf16.h): the emulated one and OpenBLAS's
// sbgemm here, oneDNN's in onednn/matmul_bf16_onednn.cpp when the build has it.
#include "kumiko/ops/matmul_bf16.h"

#include <cblas.h>
#include <dlfcn.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <tuple>

#include "kernels/cpu/bf16_convert.h"
#include "kernels/cpu/onednn/matmul_bf16_onednn.h"
#include "kumiko/core/cpu_features.h"
#include "kumiko/core/error.h"
#include "kumiko/ops/bf16.h"
#include "kumiko/ops/matmul.h"

namespace kumiko::cpu {

static_assert(sizeof(bf16) == sizeof(bfloat16), "kumiko's bf16 and OpenBLAS's bfloat16 are both 16-bit patterns");

const char* bf16_gemm_name(Bf16Gemm g) {
  switch (g) {
    case Bf16Gemm::emulated: return "emulated";
    case Bf16Gemm::openblas: return "openblas";
    case Bf16Gemm::onednn: return "onednn";
  }
  return "?";
}

namespace {

// OpenBLAS has cblas_sbgemm only when built with BUILD_BFLOAT16=1, which Debian's
// 0.3.21 packages are not (their cblas.h declares it, the library lacks the symbol).
// It is looked up at run time, so that the same binary uses it where the OpenBLAS it
// runs with has it (a site build, OPENBLAS built for COOPERLAKE; scripts/bench/
// openblas_bf16.sh builds one), unless that build is one known to be wrong.
using SbgemmFn = void (*)(CBLAS_ORDER, CBLAS_TRANSPOSE, CBLAS_TRANSPOSE, blasint, blasint, blasint, float,
                          const bfloat16*, blasint, const bfloat16*, blasint, float, float*, blasint);
struct Sbgemm {
  SbgemmFn fn = nullptr;
  std::string why_not;
};

// A string the loaded OpenBLAS reports about itself (openblas_get_config /
// openblas_get_corename), looked up by name like cblas_sbgemm: perhaps another
// OpenBLAS than the build's, through LD_LIBRARY_PATH. Empty when it has no such call.
std::string loaded_openblas(const char* symbol) {
  using StrFn = char* (*)();
  auto* fn = reinterpret_cast<StrFn>(dlsym(RTLD_DEFAULT, symbol));
  return fn ? std::string(fn()) : std::string();
}

const Sbgemm& sbgemm_lookup() {
  static const Sbgemm s = [] {
    Sbgemm r;
    auto* fn = reinterpret_cast<SbgemmFn>(dlsym(RTLD_DEFAULT, "cblas_sbgemm"));
    if (!fn) {
      r.why_not = "the OpenBLAS this process loaded has no cblas_sbgemm (it needs BUILD_BFLOAT16=1; Debian's has "
                  "none; scripts/bench/openblas_bf16.sh builds one for LD_LIBRARY_PATH)";
      return r;
    }
    const std::string config = loaded_openblas("openblas_get_config");
    const std::string corename = loaded_openblas("openblas_get_corename");
    if (!config.empty() && !corename.empty()) r.why_not = openblas_sbgemm_defect(config, corename);
    if (r.why_not.empty()) r.fn = fn;
    return r;
  }();
  return s;
}

SbgemmFn sbgemm() { return sbgemm_lookup().fn; }

}  // namespace

std::string sbgemm_unavailable_reason() { return sbgemm_lookup().why_not; }

std::string onednn_unavailable_reason() {
  if (onednn::available()) return "";
  if (!onednn::built()) return "this build has no oneDNN (install libdnnl-dev and reconfigure)";
  std::string why = "oneDNN has no bf16 matmul here (it needs AVX-512 or newer)";
  // oneDNN's dispatcher control: a cap below AVX-512 leaves it none on any CPU.
  for (const char* name : {"ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"}) {
    const char* value = std::getenv(name);
    if (value && *value) why += std::string(": ") + name + "=" + value + " caps its instruction sets";
  }
  return why + "; this CPU: " + cpu_features().describe();
}

std::string bf16_gemm_kernels(Bf16Gemm g) {
  const std::string found = loaded_openblas("openblas_get_corename");
  const std::string core = found.empty() ? std::string("?") : found;
  switch (g) {
    case Bf16Gemm::emulated: return "OpenBLAS sgemm on fp32 copies, " + core + " kernels";
    case Bf16Gemm::openblas: return "OpenBLAS cblas_sbgemm, " + core + " kernels";
    case Bf16Gemm::onednn: return "oneDNN " + onednn::kernel_name();
  }
  return "?";
}

std::string openblas_sbgemm_defect(const std::string& config, const std::string& corename) {
  std::string core = corename;
  std::transform(core.begin(), core.end(), core.begin(), [](unsigned char c) { return std::tolower(c); });
  if (core != "sapphirerapids") return "";
  // "OpenBLAS 0.3.21 NO_AFFINITY ...": the version is the second word.
  int major = 0, minor = 0, patch = 0;
  if (std::sscanf(config.c_str(), "OpenBLAS %d.%d.%d", &major, &minor, &patch) != 3)
    return "the OpenBLAS this process loaded runs sbgemm on its " + corename +
           " (AMX) kernels and its version cannot be read from openblas_get_config() ('" + config +
           "'): before 0.3.24 that kernel is wrong (OpenBLAS pull request 4048); build it for COOPERLAKE "
           "(scripts/bench/openblas_bf16.sh does) or use OpenBLAS 0.3.24 or newer";
  if (std::make_tuple(major, minor, patch) >= std::make_tuple(0, 3, 24)) return "";
  return "the OpenBLAS this process loaded (" + std::to_string(major) + "." + std::to_string(minor) + "." +
         std::to_string(patch) + ", " + corename +
         " kernels) has the AMX sbgemm of OpenBLAS before 0.3.24, which reads its K-tail tiles from the wrong offset and never asks Linux for "
         "the AMX tile state (fixed upstream by OpenBLAS pull request 4048); build it for COOPERLAKE "
         "(scripts/bench/openblas_bf16.sh does) or use OpenBLAS 0.3.24 or newer";
}

std::vector<Bf16Gemm> bf16_gemms_available() {
  std::vector<Bf16Gemm> v{Bf16Gemm::emulated};
  if (sbgemm()) v.push_back(Bf16Gemm::openblas);
  if (onednn::available()) v.push_back(Bf16Gemm::onednn);
  return v;
}

Bf16Gemm bf16_gemm_from_name(const std::string& name) {
  for (Bf16Gemm g : {Bf16Gemm::emulated, Bf16Gemm::openblas, Bf16Gemm::onednn}) {
    if (name != bf16_gemm_name(g)) continue;
    KUMIKO_USER_CHECK(g != Bf16Gemm::openblas || sbgemm(), "backend.bf16_gemm: 'openblas' cannot be used: ",
                      sbgemm_unavailable_reason());
    KUMIKO_USER_CHECK(g != Bf16Gemm::onednn || onednn::available(), "backend.bf16_gemm: 'onednn' cannot be used: ",
                      onednn_unavailable_reason());
    return g;
  }
  KUMIKO_USER_CHECK(false, "backend.bf16_gemm: expected auto, emulated, openblas or onednn, got '", name, "'");
  return Bf16Gemm::emulated;
}

Bf16Gemm bf16_gemm_default() {
  const CpuFeatures f = cpu_features();
  if (f.arch != "x86-64" || (!f.bf16_dot && !f.bf16_tiles)) return Bf16Gemm::emulated;
  if (onednn::available()) return Bf16Gemm::onednn;
  return sbgemm() ? Bf16Gemm::openblas : Bf16Gemm::emulated;
}

namespace {

// Rows x cols stored with leading dimension ld, widened into a dense fp32 copy
// (leading dimension cols). Scratch per operand, kept between calls.
const float* widen_matrix(std::vector<float>& buf, const bf16* x, int64_t rows, int64_t cols, int64_t ld) {
  buf.resize(static_cast<size_t>(rows * cols));
  if (ld == cols) {
    widen(buf.data(), x, rows * cols);
  } else {
    for (int64_t r = 0; r < rows; ++r) widen(buf.data() + r * cols, x + r * ld, cols);
  }
  return buf.data();
}

void emulated(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const bf16* A, int64_t lda, const bf16* B,
              int64_t ldb, float beta, float* C, int64_t ldc) {
  thread_local std::vector<float> a, b;
  const int64_t ar = ta ? K : M, ac = ta ? M : K, br = tb ? N : K, bc = tb ? K : N;
  const float* af = widen_matrix(a, A, ar, ac, lda);
  const float* bf = widen_matrix(b, B, br, bc, ldb);
  matmul<float>(ta, tb, M, N, K, 1.0f, af, ac, bf, bc, beta, C, ldc);
}

void openblas(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const bf16* A, int64_t lda, const bf16* B,
              int64_t ldb, float beta, float* C, int64_t ldc) {
  sbgemm()(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, static_cast<int>(M),
               static_cast<int>(N), static_cast<int>(K), 1.0f, reinterpret_cast<const bfloat16*>(A),
               static_cast<int>(lda), reinterpret_cast<const bfloat16*>(B), static_cast<int>(ldb), beta, C,
               static_cast<int>(ldc));
}

}  // namespace

void matmul_bf16(Bf16Gemm impl, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const bf16* A,
                 int64_t lda, const bf16* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  KUMIKO_CHECK(M >= 0 && N >= 0 && K >= 0, "matmul_bf16: negative size M=", M, " N=", N, " K=", K);
  KUMIKO_CHECK(beta == 0.0f || beta == 1.0f, "matmul_bf16: beta must be 0 or 1, got ", beta);
  constexpr int64_t kMax = int64_t{1} << 31;
  KUMIKO_CHECK(M < kMax && N < kMax && K < kMax && lda < kMax && ldb < kMax && ldc < kMax,
               "matmul_bf16: size exceeds the 32-bit BLAS interface");
  if (M == 0 || N == 0) return;
  if (K == 0) {  // an empty sum: C = beta C
    if (beta == 0.0f)
      for (int64_t i = 0; i < M; ++i) std::fill(C + i * ldc, C + i * ldc + N, 0.0f);
    return;
  }
  switch (impl) {
    case Bf16Gemm::emulated: return emulated(trans_a, trans_b, M, N, K, A, lda, B, ldb, beta, C, ldc);
    case Bf16Gemm::openblas:
      KUMIKO_CHECK(sbgemm() != nullptr, "matmul_bf16: this OpenBLAS has no cblas_sbgemm");
      return openblas(trans_a, trans_b, M, N, K, A, lda, B, ldb, beta, C, ldc);
    case Bf16Gemm::onednn:
      if (onednn::matmul(trans_a, trans_b, M, N, K, A, lda, B, ldb, nullptr, beta != 0.0f, C, ldc)) return;
      return emulated(trans_a, trans_b, M, N, K, A, lda, B, ldb, beta, C, ldc);
  }
}

namespace {

// What both matmul_bf16_out overloads do first: check the arguments, and finish an
// empty product, or the whole product when oneDNN runs it. False: the caller computes.
template <typename Out>
bool out_done(Bf16Gemm impl, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const bf16* A,
              int64_t lda, const bf16* B, int64_t ldb, const bf16* bias, bool accumulate, Out* C, int64_t ldc) {
  KUMIKO_CHECK(!(bias && accumulate), "matmul_bf16_out: a bias and accumulate together are not supported");
  if (M == 0 || N == 0) return true;
  return impl == Bf16Gemm::onednn && K > 0 &&
         onednn::matmul(trans_a, trans_b, M, N, K, A, lda, B, ldb, bias, accumulate, C, ldc);
}

}  // namespace

void matmul_bf16_out(Bf16Gemm impl, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const bf16* A,
                     int64_t lda, const bf16* B, int64_t ldb, const bf16* bias, bool accumulate, bf16* C,
                     int64_t ldc) {
  if (out_done(impl, trans_a, trans_b, M, N, K, A, lda, B, ldb, bias, accumulate, C, ldc)) return;
  // The fp32 result in scratch (C widened into it first when accumulating), rounded once.
  thread_local std::vector<float> acc;
  acc.resize(static_cast<size_t>(M * N));
  float* a = acc.data();
  if (accumulate) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < M; ++i)
#pragma omp simd
      for (int64_t j = 0; j < N; ++j) a[i * N + j] = detail::widen1(C[i * ldc + j]);
  }
  matmul_bf16_out(impl, trans_a, trans_b, M, N, K, A, lda, B, ldb, bias, accumulate, a, N);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < M; ++i)
#pragma omp simd
    for (int64_t j = 0; j < N; ++j) C[i * ldc + j] = detail::narrow1(a[i * N + j]);
}

void matmul_bf16_out(Bf16Gemm impl, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const bf16* A,
                     int64_t lda, const bf16* B, int64_t ldb, const bf16* bias, bool accumulate, float* C,
                     int64_t ldc) {
  if (out_done(impl, trans_a, trans_b, M, N, K, A, lda, B, ldb, bias, accumulate, C, ldc)) return;
  if (bias) {  // C starts as the broadcast bias; the GEMM accumulates onto it
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < M; ++i)
#pragma omp simd
      for (int64_t j = 0; j < N; ++j) C[i * ldc + j] = detail::widen1(bias[j]);
  }
  matmul_bf16(impl, trans_a, trans_b, M, N, K, A, lda, B, ldb, bias || accumulate ? 1.0f : 0.0f, C, ldc);
}

}  // namespace kumiko::cpu
