#include "kernels/cuda/common.cuh"

#include <cstdio>

#include "kumiko/core/error.h"

namespace kumiko::cuda {

void check(cudaError_t status, const char* what, const char* file, int line) {
  if (status == cudaSuccess) return;
  throw Error(detail::concat("CUDA error in ", what, ": ", cudaGetErrorName(status), " (",
                             cudaGetErrorString(status), ") at ", file, ":", line));
}

int device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) return -1;
  return count;
}

std::string device_description(int device) {
  cudaDeviceProp p{};
  KUMIKO_CUDA_CHECK(cudaGetDeviceProperties(&p, device));
  char buf[256];
  std::snprintf(buf, sizeof buf, "%s (sm_%d%d, %d SMs, %.1f GiB)", p.name, p.major, p.minor,
                p.multiProcessorCount, p.totalGlobalMem / 1073741824.0);
  return buf;
}

}  // namespace kumiko::cuda
