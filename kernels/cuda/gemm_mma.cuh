#pragma once
// Internal to kumiko::cuda::gemm (gemm.cu) and its tests: the two bf16 tensor-core kernels
// behind gemm<bf16, Tout> and the rule that picks one.
//   - gemm_mma (gemm_mma.cu): mma.sync m16n8k16 fed by ldmatrix from a 4-stage cp.async
//     pipeline; the fast kernel, taken whenever gemm_mma_supported holds;
//   - gemm_wmma (gemm.cu): the WMMA kernel, the fallback for every other shape or alignment.
// Both take gemm's arguments and give gemm's semantics (gemm.cuh); they differ only in the
// order of the fp32 sums, so results agree to fp32 rounding, not bitwise.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/gemm.cuh"

namespace kumiko::cuda {

// True when gemm_mma can run these operands: the leading dimensions of A and B (K or M for
// A, K or N for B, per layout) are multiples of 8 elements, and A, B, C, bias and pre (the
// latter two when non-null) are 16-byte aligned. Any M, N, K otherwise, odd N included.
template <typename Tout>
bool gemm_mma_supported(const GemmArgs& args, const bf16* A, const bf16* B, const Tout* C,
                        const bf16* bias, const Tout* pre);

// Requires gemm_mma_supported (checked) and arguments that pass gemm's own checks (not
// repeated here: call it through gemm).
template <typename Tout>
void gemm_mma(const GemmArgs& args, const bf16* A, const bf16* B, Tout* C, const bf16* bias,
              Tout* pre, cudaStream_t stream);

// gemm<bf16, Tout> forced onto the WMMA kernel, with gemm's checks (for the tests that
// compare the two kernels).
template <typename Tout>
void gemm_wmma(const GemmArgs& args, const bf16* A, const bf16* B, Tout* C, const bf16* bias,
               Tout* pre, cudaStream_t stream);

}  // namespace kumiko::cuda
