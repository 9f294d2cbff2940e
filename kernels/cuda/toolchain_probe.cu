// Placeholder until the CUDA backend lands: proves that nvcc, the architecture
// list and the CUDA runtime are wired into the build. It is linked into the
// kumiko binary and reported by `kumiko version`.
#include <cuda_runtime.h>

namespace kumiko::cuda {

__global__ void probe_kernel(int* out) { *out = 42; }

// Number of CUDA devices visible to this process, or -1 when the runtime fails
// (for example on a machine without a driver).
int device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) return -1;
  return count;
}

}  // namespace kumiko::cuda
