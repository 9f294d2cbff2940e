#pragma once
// bf16 GEMM with fp32 accumulation and an fp32 result, row-major, the conventions of
// cpu::matmul: C[M,N] = op(A) op(B) + beta * C with op(A) [M,K] (A stored [K,M] when
// trans_a) and op(B) [K,N] (B stored [N,K] when trans_b); beta is 0 or 1.
//
// Every product of two bf16 numbers is exact in fp32, so the implementations differ
// only in the order they add the products (and in whether they flush subnormals):
//   emulated  widen A and B to fp32, OpenBLAS sgemm (any CPU);
//   openblas  OpenBLAS's cblas_sbgemm (AVX512-BF16 kernels on CPUs that have them,
//             generic C elsewhere), found at run time: only an OpenBLAS built with
//             BUILD_BFLOAT16=1 has it (Debian's does not);
//   onednn    oneDNN's matmul primitive (AMX / AVX512-BF16 JIT kernels; reference
//             code elsewhere), only when the build found libdnnl.
// docs/kernels.md has the measured choice; kumiko bench gemm times all of them.
#include <cstdint>
#include <string>
#include <vector>

#include "kumiko/core/bf16.h"

namespace kumiko::cpu {

enum class Bf16Gemm { emulated, openblas, onednn };

const char* bf16_gemm_name(Bf16Gemm g);
// The implementations this build has, in the order above.
std::vector<Bf16Gemm> bf16_gemms_available();
// "emulated" / "openblas" / "onednn" (throws a user error naming the choices
// otherwise, or when this build lacks oneDNN).
Bf16Gemm bf16_gemm_from_name(const std::string& name);
// What "auto" picks without a measurement: a native bf16 GEMM where the CPU has bf16
// dot products or tiles (oneDNN if built, else OpenBLAS), the emulated one elsewhere.
Bf16Gemm bf16_gemm_default();
// What runs `g` here, for the log and kumiko bench: oneDNN's implementation name
// (e.g. "oneDNN brg:avx512_core_bf16"; brg:avx512_core_amx_bf16 is AMX), or the
// OpenBLAS core whose kernels run sbgemm / the emulated GEMM's sgemm.
std::string bf16_gemm_kernels(Bf16Gemm g);
// Why "onednn" is not among the available ones ("" when it is): a build without
// oneDNN, a CPU it has no bf16 matmul for (before AVX-512), or ONEDNN_MAX_CPU_ISA /
// DNNL_MAX_CPU_ISA capping it below that (named with its value).
std::string onednn_unavailable_reason();
// Why "openblas" is not among the available ones ("" when it is): the loaded OpenBLAS
// has no cblas_sbgemm, or has one known to compute wrong results (below).
std::string sbgemm_unavailable_reason();
// A reason to refuse the cblas_sbgemm of the OpenBLAS whose openblas_get_config() and
// openblas_get_corename() these are, "" if none: before 0.3.24 the SAPPHIRERAPIDS
// (AMX) kernel loads its K-tail tiles (the odd last k) from twice the offset it stores
// them at (read in the 0.3.21 source against the fix; no AMX CPU was at hand) and
// never asks Linux for the AMX tile state (SIGILL unless something else did); fixed
// upstream by OpenBLAS pull request 4048. Its COOPERLAKE (AVX512-BF16) kernel is fine.
std::string openblas_sbgemm_defect(const std::string& config, const std::string& corename);

void matmul_bf16(Bf16Gemm impl, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const bf16* A,
                 int64_t lda, const bf16* B, int64_t ldb, float beta, float* C, int64_t ldc);

// The same product with a bias: C = op(A) op(B) + bias + (accumulate ? C : 0), bias [N]
// bf16, broadcast over rows (nullable; not with accumulate), the sum in fp32. A bf16 C
// is rounded once to nearest even: oneDNN writes bf16 (and adds the bias) itself, no
// fp32 round trip through memory (AVX512-BF16's conversion flushes subnormal results
// to zero); the others compute into fp32 scratch and round it.
void matmul_bf16_out(Bf16Gemm impl, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const bf16* A,
                     int64_t lda, const bf16* B, int64_t ldb, const bf16* bias, bool accumulate, bf16* C,
                     int64_t ldc);
void matmul_bf16_out(Bf16Gemm impl, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const bf16* A,
                     int64_t lda, const bf16* B, int64_t ldb, const bf16* bias, bool accumulate, float* C,
                     int64_t ldc);

}  // namespace kumiko::cpu
