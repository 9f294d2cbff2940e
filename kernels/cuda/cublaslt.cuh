#pragma once
// The vendor reference path for matrix multiplication ([backend] matmul = cublas):
// cuBLASLt with the same arguments and semantics as kumiko::cuda::gemm, including
// the bias and GELU epilogues (CUBLASLT_EPILOGUE_BIAS / GELU_AUX_BIAS). fp32 uses
// CUBLAS_COMPUTE_32F (no TF32), bf16 CUBLAS_COMPUTE_32F with bf16 inputs.
#include <memory>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/gemm.cuh"

namespace kumiko::cuda {

class CublasLt {
 public:
  // `workspace_bytes` of device memory are allocated once here (cuBLASLt's scratch).
  explicit CublasLt(size_t workspace_bytes = 32u << 20);
  ~CublasLt();
  CublasLt(const CublasLt&) = delete;
  CublasLt& operator=(const CublasLt&) = delete;

  template <typename Tin, typename Tout>
  void gemm(const GemmArgs& args, const Tin* A, const Tin* B, Tout* C, const Tin* bias, Tout* pre,
            cudaStream_t stream);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace kumiko::cuda
