#pragma once
// oneDNN's bf16 matmul behind cpu::matmul_bf16 (kernels/cpu/matmul_bf16.cpp). Built
// from matmul_bf16_onednn.cpp when CMake finds libdnnl (KUMIKO_ONEDNN), otherwise
// from matmul_bf16_none.cpp, whose available() is false. available() is also false
// where oneDNN has no bf16 matmul for this CPU (before AVX-512).
#include <cstdint>

#include "kumiko/core/bf16.h"

namespace kumiko::cpu::onednn {

bool available();
// C = A B (+ bias [N] broadcast over rows) (+ C when accumulate), fp32 accumulation;
// C fp32, or bf16 rounded once from the fp32 sum (oneDNN's rounding: AVX512-BF16's
// vcvtneps2bf16 flushes subnormal results to zero). False (and nothing written) when
// oneDNN has no primitive for these shapes and strides: the caller falls back to the
// emulated GEMM.
bool matmul(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const bf16* A, int64_t lda, const bf16* B,
            int64_t ldb, const bf16* bias, bool accumulate, float* C, int64_t ldc);
bool matmul(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const bf16* A, int64_t lda, const bf16* B,
            int64_t ldb, const bf16* bias, bool accumulate, bf16* C, int64_t ldc);

}  // namespace kumiko::cpu::onednn
