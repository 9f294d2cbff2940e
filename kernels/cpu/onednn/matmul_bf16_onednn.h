#pragma once
// oneDNN's bf16 matmul behind cpu::matmul_bf16 (kernels/cpu/matmul_bf16.cpp). Built
// from matmul_bf16_onednn.cpp when CMake finds libdnnl (KUMIKO_ONEDNN), otherwise
// from matmul_bf16_none.cpp, whose available() is false. available() is also false
// where oneDNN has no bf16 matmul for this CPU (before AVX-512).
#include <cstddef>
#include <cstdint>
#include <string>

#include "kernels/cpu/packed_b.h"
#include "kumiko/core/bf16.h"

namespace kumiko::cpu::onednn {

bool available();
// Whether this build has oneDNN (available() also asks the CPU).
bool built();
// The implementation oneDNN picks here for a bf16 matmul, as it names it
// (impl_info_str of a 256 x 256 x 256 product, B transposed, fp32 out): in oneDNN 2.6
// "brg:avx512_core_amx_bf16" on AMX tiles, "brg:avx512_core_bf16" on AVX512-BF16,
// "gemm:jit" on AVX-512 without bf16 instructions (bf16 widened inside oneDNN); ""
// where available() is false.
std::string kernel_name();
// C = A B (+ bias [N] broadcast over rows) (+ C when accumulate), fp32 accumulation;
// C fp32, or bf16 rounded once from the fp32 sum (oneDNN's rounding: AVX512-BF16's
// vcvtneps2bf16 flushes subnormal results to zero). False (and nothing written) when
// oneDNN has no primitive for these shapes and strides: the caller falls back to the
// emulated GEMM.
bool matmul(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const bf16* A, int64_t lda, const bf16* B,
            int64_t ldb, const bf16* bias, bool accumulate, float* C, int64_t ldc);
bool matmul(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const bf16* A, int64_t lda, const bf16* B,
            int64_t ldb, const bf16* bias, bool accumulate, bf16* C, int64_t ldc);

// B kept packed (packed_b.h). packed_b: the layout oneDNN's brgemm asks for B [K, N] in
// C [M, N] = A [M, K] B (A row major; C bf16 or fp32), where it is one packed_b.h
// describes; otherwise an empty PackedB (B stays as it is). matmul_packed: the product
// with B packed in that layout (A row major, lda; no transposes); false, with nothing
// written, where oneDNN's brgemm does not take this B for this M: the caller multiplies
// B as it is (the same kernels either way, so the same bits).
PackedB packed_b(int64_t M, int64_t N, int64_t K, bool bf16_out);
bool matmul_packed(int64_t M, const bf16* A, int64_t lda, const PackedB& B, const bf16* Bp, const bf16* bias,
                   bool accumulate, float* C, int64_t ldc);
bool matmul_packed(int64_t M, const bf16* A, int64_t lda, const PackedB& B, const bf16* Bp, const bf16* bias,
                   bool accumulate, bf16* C, int64_t ldc);

// Scratchpad. oneDNN sizes a primitive's scratchpad by the OpenMP threads it will use;
// at many threads it may split the sum over K with a private fp32 copy of C per thread
// group (on a 48-thread process, 12 GB for llama-1b's head weight gradient). kumiko
// owns the scratchpad, one buffer shared by every primitive, grown to the largest one
// run, and runs a GEMM whose scratchpad would exceed the budget in 2, 4, 8, ... chunks
// of C's rows (the last one shorter) until each fits (rows are independent sums; one
// row at least).
inline constexpr size_t kDefaultScratchpadBudget = size_t{256} << 20;
// How the GEMM of these arguments runs at the current OpenMP thread count: rows of C
// per call (M when whole) and the scratchpad it needs ({0, 0} for an empty product
// and where oneDNN has no primitive: the emulated GEMM runs it).
struct Chunking {
  int64_t rows = 0;
  size_t scratchpad = 0;
};
Chunking chunking(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, int64_t lda, int64_t ldb, int64_t ldc,
                  bool bias, bool accumulate, bool bf16_out);
// Bytes of the shared scratchpad now (the largest needed by the GEMMs run so far).
size_t scratchpad_in_use();
// Another budget (tests); drops the primitives and the scratchpad made for the old one.
void set_scratchpad_budget(size_t bytes);

}  // namespace kumiko::cpu::onednn
