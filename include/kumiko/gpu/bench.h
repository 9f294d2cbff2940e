#pragma once
// `kumiko bench kernels`: each CUDA kernel timed against the vendor library users
// would otherwise call on the same card (cuBLASLt for GEMM, cuDNN for attention) or,
// for memory-bound kernels, against the measured device-to-device copy bandwidth.
#include <string>

namespace kumiko::gpu {

struct KernelBenchOptions {
  bool quick = false;     // smaller sizes and fewer repetitions (a smoke run)
  std::string markdown;   // also write the table here ("" = no file)
};

// Prints one table (kernel, shape, kumiko time and rate, peer time and rate, ratio).
// Returns 0, or throws UserError without the CUDA backend or a GPU.
int run_kernel_benchmarks(const KernelBenchOptions& options);

}  // namespace kumiko::gpu
