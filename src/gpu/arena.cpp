#include "kumiko/gpu/arena.h"

#include <cuda_runtime.h>

#include "kernels/cuda/common.cuh"
#include "kumiko/core/error.h"

namespace kumiko::gpu {

DeviceArena::DeviceArena(size_t capacity, const std::string& what) : capacity_(capacity) {
  if (capacity_ == 0) return;
  const cudaError_t rc = cudaMalloc(reinterpret_cast<void**>(&base_), capacity_);
  if (rc != cudaSuccess) {
    size_t free_bytes = 0, total = 0;
    cudaGetLastError();
    cudaMemGetInfo(&free_bytes, &total);
    throw UserError(detail::concat("backend.device = cuda: the ", what, " needs ", capacity_ / 1048576.0,
                                   " MiB of GPU memory but only ", free_bytes / 1048576.0, " MiB of ",
                                   total / 1048576.0,
                                   " MiB are free (lower train.micro_batch or data.seq_len): ",
                                   cudaGetErrorString(rc)));
  }
}

DeviceArena::~DeviceArena() {
  if (base_) cudaFree(base_);
}

void* DeviceArena::take_bytes(size_t bytes) {
  const size_t offset = (used_ + 255) / 256 * 256;
  used_ = offset + bytes;
  if (!base_) return nullptr;
  KUMIKO_CHECK(used_ <= capacity_, "device arena exhausted: ", used_, " of ", capacity_, " bytes");
  return base_ + offset;
}

}  // namespace kumiko::gpu
