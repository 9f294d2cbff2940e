// Bias gradient of a linear layer: dbias[c] += sum_n dy[n, c], deterministic, no atomics.
//
// The rows are split into chunks whose count and size depend only on N (as
// kumiko::cpu::detail::make_chunks does on the CPU), so the summation order is fixed.
// Pass 1: block (x, chunk) of 32 x 8 threads owns 32 columns of one chunk; thread
//   (tx, ty) sums rows ty, ty+8, ... of the chunk for column tx in row order (a warp
//   reads 32 consecutive columns of one row), then the 8 partials of a column are added
//   in ty order through shared memory and written to partial[chunk][c].
// Pass 2: one thread per column adds partial[0..chunks)[c] in chunk order and adds the
//   total to dbias[c] once.
#include "kernels/cuda/linear.cuh"

#include <algorithm>

namespace kumiko::cuda {

namespace {

constexpr int kCols = 32, kRowThreads = 8;  // pass-1 block: 32 columns x 8 row lanes
constexpr int64_t kMaxChunks = 128;         // bounds the workspace to 128 * C floats
constexpr int64_t kMinChunkRows = 64;       // keeps a chunk's rows worth a block

struct Chunks {
  int64_t count, size;  // size rows per chunk, the last one possibly shorter
};

Chunks make_chunks(int64_t N) {
  if (N <= 0) return {0, 1};
  const int64_t count = std::min(kMaxChunks, std::max<int64_t>(1, N / kMinChunkRows));
  const int64_t size = ceil_div(N, count);
  return {ceil_div(N, size), size};
}

template <typename T>
__global__ void __launch_bounds__(kCols * kRowThreads)
    bias_partials_kernel(float* __restrict__ partial, const T* __restrict__ dy, int64_t N, int64_t C,
                         int64_t chunk_rows) {
  __shared__ float sums[kRowThreads][kCols + 1];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t c = blockIdx.x * int64_t{kCols} + tx;
  const int64_t chunk = blockIdx.y;
  const int64_t r0 = chunk * chunk_rows, r1 = std::min(N, r0 + chunk_rows);
  float s = 0.0f;
  if (c < C)
    for (int64_t r = r0 + ty; r < r1; r += kRowThreads) s += to_f(dy[r * C + c]);
  sums[ty][tx] = s;
  __syncthreads();
  if (ty == 0 && c < C) {
    float total = sums[0][tx];
#pragma unroll
    for (int y = 1; y < kRowThreads; ++y) total += sums[y][tx];
    partial[chunk * C + c] = total;
  }
}

__global__ void bias_reduce_kernel(float* __restrict__ dbias, const float* __restrict__ partial, int64_t chunks,
                                   int64_t C) {
  const int64_t c = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (c >= C) return;
  float s = 0.0f;
  for (int64_t k = 0; k < chunks; ++k) s += partial[k * C + c];
  dbias[c] += s;
}

}  // namespace

size_t bias_backward_workspace_bytes(int64_t N, int64_t C) {
  return static_cast<size_t>(make_chunks(N).count * std::max<int64_t>(C, 0)) * sizeof(float);
}

template <typename T>
void bias_backward(float* dbias, const T* dy, int64_t N, int64_t C, void* workspace, cudaStream_t stream) {
  const Chunks ch = make_chunks(N);
  if (ch.count == 0 || C <= 0) return;  // nothing to add
  float* partial = static_cast<float*>(workspace);
  const dim3 block(kCols, kRowThreads);
  const dim3 grid(static_cast<unsigned>(ceil_div(C, kCols)), static_cast<unsigned>(ch.count));
  bias_partials_kernel<T><<<grid, block, 0, stream>>>(partial, dy, N, C, ch.size);
  KUMIKO_CUDA_LAUNCH_CHECK();
  constexpr int kThreads = 256;
  bias_reduce_kernel<<<static_cast<unsigned>(ceil_div(C, kThreads)), kThreads, 0, stream>>>(dbias, partial,
                                                                                            ch.count, C);
  KUMIKO_CUDA_LAUNCH_CHECK();
}

template void bias_backward<float>(float*, const float*, int64_t, int64_t, void*, cudaStream_t);
template void bias_backward<bf16>(float*, const bf16*, int64_t, int64_t, void*, cudaStream_t);

}  // namespace kumiko::cuda
