#pragma once
// Shared by every CUDA kernel file and by the host code that calls the launchers.
// Host-includable: g++ sees only declarations, inline helpers and the bf16 type.
//
// Conventions of kernels/cuda (one .cu/.cuh pair per op):
//   - launchers live in namespace kumiko::cuda, take device pointers and end with a
//     cudaStream_t; they never allocate (scratch comes from the caller's arena, sized
//     by a *_workspace_bytes function) and never synchronize;
//   - element type T is float or bf16 (explicit instantiations in the .cu); the
//     arithmetic is fp32; statistics (mean, rstd, lse, losses) and weight gradients
//     are fp32 in both precisions;
//   - semantics mirror the CPU op of the same name (include/kumiko/ops/*.h), including
//     whether an output is overwritten or accumulated, unless a header says otherwise;
//   - results are deterministic: no floating-point atomics whose order changes the sum.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

namespace kumiko::cuda {

using bf16 = __nv_bfloat16;

// Throws kumiko::Error naming the call, the CUDA error string and the source location.
void check(cudaError_t status, const char* what, const char* file, int line);
// Number of visible devices, or -1 when the runtime fails (no driver).
int device_count();
// device_count(), or a UserError "<what>: no CUDA device is visible to this process ...;
// CUDA_VISIBLE_DEVICES = '...'<hint>" when there is none.
int require_devices(const std::string& what, const std::string& hint = "");
// "NVIDIA H100 80GB HBM3 (sm_90, 132 SMs, 79.1 GiB)" for device `device`.
std::string device_description(int device);

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace kumiko::cuda

#define KUMIKO_CUDA_CHECK(call) ::kumiko::cuda::check((call), #call, __FILE__, __LINE__)
// After a kernel launch: reports launch-configuration errors at once.
#define KUMIKO_CUDA_LAUNCH_CHECK() ::kumiko::cuda::check(cudaGetLastError(), "kernel launch", __FILE__, __LINE__)

#ifdef __CUDACC__
namespace kumiko::cuda {

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(bf16 x) { return __bfloat162float(x); }
template <typename T>
__device__ __forceinline__ T from_f(float x);
template <>
__device__ __forceinline__ float from_f<float>(float x) { return x; }
template <>
__device__ __forceinline__ bf16 from_f<bf16>(float x) { return __float2bfloat16_rn(x); }

// Reductions over groups of kLanes consecutive lanes (a power of two up to 32; every
// lane of the warp takes part and gets its group's result).
template <int kLanes = 32>
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = kLanes / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
template <int kLanes = 32>
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = kLanes / 2; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets it.
// `scratch` holds 32 floats of shared memory; the call synchronizes the block.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  v = warp_sum(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : 0.0f;
  return warp_sum(v);
}
__device__ __forceinline__ float block_max(float v, float* scratch) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : -INFINITY;
  return warp_max(v);
}

}  // namespace kumiko::cuda
#endif
