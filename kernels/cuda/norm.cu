// Sum of squares of a flat fp32 buffer in double, deterministic (two passes, no atomics).
//
// Pass 1: a grid whose size depends only on n (at most 1024 blocks of 256 threads);
// threads grid-stride over the buffer (float4 loads when it is 16-byte aligned; the
// n % 4 tail goes to the first threads), squaring each float exactly in double and
// accumulating in double; each block reduces its threads in a fixed tree and writes
// one partial to the workspace. Pass 2: one block sums the partials in a fixed tree
// into *out. Same n, same launch, same order: bitwise reproducible.
#include "kernels/cuda/norm.cuh"

#include <algorithm>

namespace kumiko::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 1024;
constexpr int64_t kElementsPerThread = 8;  // sizes the grid for small n

int64_t pass1_blocks(int64_t n) {
  return std::clamp<int64_t>(ceil_div(n, kThreads * kElementsPerThread), 1, kMaxBlocks);
}

// Sum over the block (blockDim.x == kThreads) in a fixed order; the result is valid in
// thread 0.
__device__ __forceinline__ double block_sum_double(double v) {
  __shared__ double partial[kThreads / 32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  v = 0.0;
  if (threadIdx.x == 0) {
#pragma unroll
    for (int w = 0; w < kThreads / 32; ++w) v += partial[w];
  }
  return v;
}

__device__ __forceinline__ double square(float x) { return double(x) * double(x); }

__global__ void __launch_bounds__(kThreads) sum_squares_partial_kernel(double* __restrict__ partials,
                                                                       const float* __restrict__ x, int64_t n) {
  const int64_t stride = int64_t{gridDim.x} * kThreads;
  const int64_t first = blockIdx.x * int64_t{kThreads} + threadIdx.x;
  double acc = 0.0;
  const int64_t n_vec = reinterpret_cast<uintptr_t>(x) % 16 == 0 ? n / 4 : 0;
  for (int64_t i = first; i < n_vec; i += stride) {
    const float4 v = reinterpret_cast<const float4*>(x)[i];
    acc += (square(v.x) + square(v.y)) + (square(v.z) + square(v.w));
  }
  for (int64_t i = 4 * n_vec + first; i < n; i += stride) acc += square(x[i]);
  acc = block_sum_double(acc);
  if (threadIdx.x == 0) partials[blockIdx.x] = acc;
}

__global__ void __launch_bounds__(kThreads) sum_partials_kernel(double* __restrict__ out,
                                                                const double* __restrict__ partials, int count) {
  double acc = 0.0;
  for (int i = threadIdx.x; i < count; i += kThreads) acc += partials[i];
  acc = block_sum_double(acc);
  if (threadIdx.x == 0) *out = acc;
}

}  // namespace

size_t sum_squares_workspace_bytes(int64_t n) { return static_cast<size_t>(pass1_blocks(n)) * sizeof(double); }

void sum_squares(double* out, const float* x, int64_t n, void* workspace, cudaStream_t stream) {
  const int64_t blocks = pass1_blocks(std::max<int64_t>(n, 0));
  double* partials = static_cast<double*>(workspace);
  sum_squares_partial_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(partials, x, std::max<int64_t>(n, 0));
  KUMIKO_CUDA_LAUNCH_CHECK();
  sum_partials_kernel<<<1, kThreads, 0, stream>>>(out, partials, static_cast<int>(blocks));
  KUMIKO_CUDA_LAUNCH_CHECK();
}

}  // namespace kumiko::cuda
