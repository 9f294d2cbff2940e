#include "kernels/cuda/common.cuh"

#include <cstdio>
#include <cstdlib>

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

int require_devices(const std::string& what, const std::string& hint) {
  const int n = device_count();
  const char* visible = std::getenv("CUDA_VISIBLE_DEVICES");
  KUMIKO_USER_CHECK(n > 0, what, ": no CUDA device is visible to this process",
                    n < 0 ? " (the CUDA driver could not be initialised)" : "", "; CUDA_VISIBLE_DEVICES ",
                    visible != nullptr ? detail::concat("= '", visible, "'") : std::string("is not set"), hint);
  return n;
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
