// One block per row for the reductions (fixed tree: deterministic), grid-stride
// loops for the elementwise kernels; fp32 math for float and bf16 data.
#include "kernels/cuda/parallel.cuh"

#include "kumiko/core/error.h"

#include <algorithm>
#include <cmath>
#include <cfloat>

namespace kumiko::cuda {

namespace {

constexpr int kThreads = 256;

unsigned flat_blocks(int64_t work) {
  return static_cast<unsigned>(std::min<int64_t>(ceil_div(work, kThreads), int64_t{1} << 20));
}

// Block-wide reduction (blockDim.x == kThreads) in a fixed order; every thread gets the result.
template <bool kMax>
__device__ float block_reduce(float v) {
  __shared__ float buf[kThreads / 32];
  for (int o = 16; o > 0; o >>= 1) {
    const float w = __shfl_xor_sync(0xffffffffu, v, o);
    v = kMax ? fmaxf(v, w) : v + w;
  }
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) buf[warp] = v;
  __syncthreads();
  v = lane < kThreads / 32 ? buf[lane] : (kMax ? -FLT_MAX : 0.0f);
  for (int o = 16; o > 0; o >>= 1) {
    const float w = __shfl_xor_sync(0xffffffffu, v, o);
    v = kMax ? fmaxf(v, w) : v + w;
  }
  __syncthreads();  // buf may be reused by the caller's next reduction
  return v;
}

template <typename T>
__global__ void embedding_shard_kernel(T* __restrict__ out, const int32_t* __restrict__ ids,
                                       const T* __restrict__ table, int64_t N, int64_t C, int64_t v0,
                                       int64_t V_local) {
  for (int64_t i = blockIdx.x * int64_t{kThreads} + threadIdx.x; i < N * C; i += int64_t{gridDim.x} * kThreads) {
    const int64_t n = i / C, c = i % C;
    const int64_t id = ids[n] - v0;
    out[i] = id >= 0 && id < V_local ? table[id * C + c] : from_f<T>(0.0f);
  }
}

template <typename T>
__global__ void add_rows_kernel(T* __restrict__ x, const T* __restrict__ src, int64_t first, int64_t rows,
                                int64_t period, int64_t C) {
  for (int64_t i = blockIdx.x * int64_t{kThreads} + threadIdx.x; i < rows * C;
       i += int64_t{gridDim.x} * kThreads) {
    const int64_t r = i / C, c = i % C;
    x[i] = from_f<T>(to_f(x[i]) + to_f(src[((first + r) % period) * C + c]));
  }
}

template <typename T>
__global__ void ce_row_max_kernel(float* __restrict__ mx, const T* __restrict__ logits, int64_t V) {
  const T* row = logits + blockIdx.x * V;
  float m = -FLT_MAX;
  for (int64_t j = threadIdx.x; j < V; j += kThreads) m = fmaxf(m, to_f(row[j]));
  m = block_reduce<true>(m);
  if (threadIdx.x == 0) mx[blockIdx.x] = m;
}

template <typename T>
__global__ void ce_sums_kernel(float* __restrict__ sum, float* __restrict__ tgt, const T* __restrict__ logits,
                               const float* __restrict__ mx, const int32_t* __restrict__ targets, int64_t V,
                               int64_t v0) {
  const T* row = logits + blockIdx.x * V;
  const float m = mx[blockIdx.x];
  float s = 0.0f;
  for (int64_t j = threadIdx.x; j < V; j += kThreads) s += expf(to_f(row[j]) - m);
  s = block_reduce<false>(s);
  if (threadIdx.x == 0) {
    sum[blockIdx.x] = s;
    const int64_t t = targets[blockIdx.x] - v0;
    tgt[blockIdx.x] = t >= 0 && t < V ? to_f(row[t]) : 0.0f;
  }
}

template <typename T>
__global__ void rope_at_kernel(T* __restrict__ qkv, int64_t pos, int64_t heads, int64_t D, double theta) {
  const int64_t half = D / 2;
  for (int64_t i = blockIdx.x * int64_t{kThreads} + threadIdx.x; i < heads * half; i += int64_t{gridDim.x} * kThreads) {
    const int64_t h = i / half, j = i % half;
    const double angle = static_cast<double>(pos) * pow(theta, -2.0 * static_cast<double>(j) / static_cast<double>(D));
    const double c = cos(angle), s = sin(angle);
    T* head = qkv + h * D;
    const double a = to_f(head[j]), b = to_f(head[j + half]);
    head[j] = from_f<T>(static_cast<float>(a * c - b * s));
    head[j + half] = from_f<T>(static_cast<float>(b * c + a * s));
  }
}

// One block per query head: scores over the cached positions in shared memory (fp32),
// softmax, then each thread accumulates output dimensions.
template <typename T>
__global__ void attention_decode_kernel(T* __restrict__ out, const T* __restrict__ q, const T* __restrict__ k,
                                        const T* __restrict__ v, int64_t len, int64_t Hkv, int64_t D, int64_t group,
                                        float scale) {
  extern __shared__ float scores[];
  const int64_t h = blockIdx.x, kv = h / group;
  const T* qh = q + h * D;
  float mx = -FLT_MAX;
  for (int64_t t = threadIdx.x; t < len; t += kThreads) {
    const T* kt = k + (t * Hkv + kv) * D;
    float dot = 0.0f;
    for (int64_t i = 0; i < D; ++i) dot += to_f(qh[i]) * to_f(kt[i]);
    scores[t] = dot * scale;
    mx = fmaxf(mx, scores[t]);
  }
  mx = block_reduce<true>(mx);
  float sum = 0.0f;
  for (int64_t t = threadIdx.x; t < len; t += kThreads) {
    scores[t] = expf(scores[t] - mx);
    sum += scores[t];
  }
  sum = block_reduce<false>(sum);  // its barriers also publish every score
  for (int64_t i = threadIdx.x; i < D; i += kThreads) {
    float acc = 0.0f;
    for (int64_t t = 0; t < len; ++t) acc += scores[t] * to_f(v[(t * Hkv + kv) * D + i]);
    out[h * D + i] = from_f<T>(acc / sum);
  }
}

}  // namespace

template <typename T>
void rope_at(T* qkv, int64_t pos, int64_t Hq, int64_t Hkv, int64_t D, double theta, cudaStream_t stream) {
  const int64_t work = (Hq + Hkv) * (D / 2);
  if (work == 0) return;
  rope_at_kernel<T><<<flat_blocks(work), kThreads, 0, stream>>>(qkv, pos, Hq + Hkv, D, theta);
  KUMIKO_CUDA_LAUNCH_CHECK();
}

template <typename T>
void attention_decode(T* out, const T* q, const T* k, const T* v, int64_t len, int64_t Hq, int64_t Hkv, int64_t D,
                      cudaStream_t stream) {
  const size_t shared = static_cast<size_t>(len) * sizeof(float);
  // 48 KiB of shared memory without opting in, less the two reductions' static buffers.
  KUMIKO_CHECK(shared + 2 * (kThreads / 32) * sizeof(float) <= 48 * 1024, "attention_decode: ", len,
               " cached positions exceed the 48 KiB of shared memory for the scores");
  attention_decode_kernel<T><<<static_cast<unsigned>(Hq), kThreads, shared, stream>>>(
      out, q, k, v, len, Hkv, D, Hq / Hkv, static_cast<float>(1.0 / std::sqrt(static_cast<double>(D))));
  KUMIKO_CUDA_LAUNCH_CHECK();
}

template <typename T>
void embedding_forward_shard(T* out, const int32_t* ids, const T* table, int64_t N, int64_t C, int64_t v0,
                             int64_t V_local, cudaStream_t stream) {
  if (N * C == 0) return;
  embedding_shard_kernel<T><<<flat_blocks(N * C), kThreads, 0, stream>>>(out, ids, table, N, C, v0, V_local);
  KUMIKO_CUDA_LAUNCH_CHECK();
}

template <typename T>
void add_rows(T* x, const T* src, int64_t first, int64_t rows, int64_t period, int64_t C, cudaStream_t stream) {
  if (rows * C == 0) return;
  add_rows_kernel<T><<<flat_blocks(rows * C), kThreads, 0, stream>>>(x, src, first, rows, period, C);
  KUMIKO_CUDA_LAUNCH_CHECK();
}

template <typename T>
void ce_row_max(float* mx, const T* logits, int64_t N, int64_t V_local, cudaStream_t stream) {
  if (N == 0) return;
  ce_row_max_kernel<T><<<static_cast<unsigned>(N), kThreads, 0, stream>>>(mx, logits, V_local);
  KUMIKO_CUDA_LAUNCH_CHECK();
}

template <typename T>
void ce_sums(float* sum, float* tgt, const T* logits, const float* mx, const int32_t* targets, int64_t N,
             int64_t V_local, int64_t v0, cudaStream_t stream) {
  if (N == 0) return;
  ce_sums_kernel<T><<<static_cast<unsigned>(N), kThreads, 0, stream>>>(sum, tgt, logits, mx, targets, V_local, v0);
  KUMIKO_CUDA_LAUNCH_CHECK();
}

#define KUMIKO_PARALLEL_OPS(T)                                                                                \
  template void embedding_forward_shard<T>(T*, const int32_t*, const T*, int64_t, int64_t, int64_t, int64_t,  \
                                           cudaStream_t);                                                     \
  template void add_rows<T>(T*, const T*, int64_t, int64_t, int64_t, int64_t, cudaStream_t);                  \
  template void ce_row_max<T>(float*, const T*, int64_t, int64_t, cudaStream_t);                              \
  template void ce_sums<T>(float*, float*, const T*, const float*, const int32_t*, int64_t, int64_t, int64_t, \
                           cudaStream_t);                                                                     \
  template void rope_at<T>(T*, int64_t, int64_t, int64_t, int64_t, double, cudaStream_t);                     \
  template void attention_decode<T>(T*, const T*, const T*, const T*, int64_t, int64_t, int64_t, int64_t,     \
                                    cudaStream_t);
KUMIKO_PARALLEL_OPS(float)
KUMIKO_PARALLEL_OPS(bf16)

}  // namespace kumiko::cuda
