#pragma once
// The CUDA backend's options ([backend] dtype, matmul, attention).
#include <string>

namespace kumiko::gpu {

struct GpuOptions {
  std::string dtype = "fp32";        // fp32 | bf16 (mixed precision: bf16 activations and weight copies, fp32 master)
  std::string matmul = "kumiko";     // kumiko | cublas
  std::string attention = "kumiko";  // kumiko | cudnn (bf16 only)
};

}  // namespace kumiko::gpu
