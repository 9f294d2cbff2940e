// Fused softmax + cross-entropy, one block per row of logits, probabilities never stored.
//
// Pass 1 reads the row once with the online softmax normaliser (Milakov & Gimelshein,
// "Online normalizer calculation for softmax", 2018): every thread keeps a running
// (max m, sum of exp(x - m)) over its strided slice, rescaling its sum when the max
// grows; the pairs are merged across the block in a fixed tree (deterministic).
// Pass 2 (backward) re-reads the row and overwrites it in place with
// (exp(x - lse) - onehot) * scale; each element is read then written by the same thread,
// and every read of pass 1 (the target logit included) precedes the block reduction's
// barrier, so the in-place rewrite is safe. Rows with V % 8 == 0 and 16-byte aligned
// logits use 8-element vector accesses. Math is fp32 for both float and bf16.
//
// Targets are not checked here: they must lie in [0, V) (the host checks them before
// uploading, as kumiko::cpu::cross_entropy_* does). In the vocabulary-parallel pair a
// target outside this rank's shard is expected and simply contributes nothing.
#include "kernels/cuda/cross_entropy.cuh"

#include <algorithm>
#include <cfloat>

#include "kernels/cuda/vector_util.cuh"

namespace kumiko::cuda {

namespace {

constexpr int kVec = 8;  // elements per vector access (vec::load_f: 16 or 32 bytes)
constexpr int kMaxThreads = 512;

// Running softmax normaliser: sum of exp(x - m) over the elements seen. m starts at
// -FLT_MAX rather than -inf so that merging two empty states never computes inf - inf.
struct MaxSum {
  float m = -FLT_MAX;
  float s = 0.0f;
};

__device__ __forceinline__ void ms_add(MaxSum& a, float x) {
  if (x > a.m) {
    a.s = a.s * expf(a.m - x) + 1.0f;
    a.m = x;
  } else {
    a.s += expf(x - a.m);
  }
}

__device__ __forceinline__ void ms_add8(MaxSum& a, const float (&x)[kVec]) {
  float mx = x[0];
#pragma unroll
  for (int k = 1; k < kVec; ++k) mx = fmaxf(mx, x[k]);
  if (mx > a.m) {
    a.s *= expf(a.m - mx);
    a.m = mx;
  }
  float s = 0.0f;
#pragma unroll
  for (int k = 0; k < kVec; ++k) s += expf(x[k] - a.m);
  a.s += s;
}

__device__ __forceinline__ MaxSum ms_merge(MaxSum a, MaxSum b) {
  MaxSum r;
  r.m = fmaxf(a.m, b.m);
  r.s = a.s * expf(a.m - r.m) + b.s * expf(b.m - r.m);
  return r;
}

// Merge over the warp in a fixed butterfly; every lane gets the same result.
__device__ __forceinline__ MaxSum warp_merge(MaxSum a) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    MaxSum b;
    b.m = __shfl_xor_sync(0xffffffffu, a.m, o);
    b.s = __shfl_xor_sync(0xffffffffu, a.s, o);
    a = ms_merge(a, b);
  }
  return a;
}

// Merge over the block (blockDim.x a multiple of 32); every thread gets the same
// result. Contains __syncthreads.
__device__ __forceinline__ MaxSum block_merge(MaxSum a) {
  __shared__ float sm[32], ss[32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  a = warp_merge(a);
  if (lane == 0) {
    sm[warp] = a.m;
    ss[warp] = a.s;
  }
  __syncthreads();
  MaxSum w;
  if (lane < warps) {
    w.m = sm[lane];
    w.s = ss[lane];
  }
  return warp_merge(w);
}

// The (max, sum exp) of one row of V elements, merged over the block.
template <typename T, bool kVectorised>
__device__ __forceinline__ MaxSum row_stats(const T* row, int64_t V) {
  MaxSum a;
  if constexpr (kVectorised) {
    for (int64_t i = threadIdx.x; i < V / kVec; i += blockDim.x) {
      float x[kVec];
      vec::load_f<kVec>(row, i, x);
      ms_add8(a, x);
    }
  } else {
    for (int64_t i = threadIdx.x; i < V; i += blockDim.x) ms_add(a, to_f(row[i]));
  }
  return block_merge(a);
}

// row[i] = (exp(row[i] - lse) - [i == target]) * scale; target may lie outside [0, V).
template <typename T, bool kVectorised>
__device__ __forceinline__ void row_gradient(T* row, int64_t V, float lse, int64_t target, float scale) {
  if constexpr (kVectorised) {
    for (int64_t i = threadIdx.x; i < V / kVec; i += blockDim.x) {
      float x[kVec];
      vec::load_f<kVec>(row, i, x);
#pragma unroll
      for (int k = 0; k < kVec; ++k) {
        x[k] = (expf(x[k] - lse) - (i * kVec + k == target ? 1.0f : 0.0f)) * scale;
      }
      vec::store_f<kVec>(row, i, x);
    }
  } else {
    for (int64_t i = threadIdx.x; i < V; i += blockDim.x) {
      row[i] = from_f<T>((expf(to_f(row[i]) - lse) - (i == target ? 1.0f : 0.0f)) * scale);
    }
  }
}

template <typename T, bool kVectorised>
__global__ void cross_entropy_kernel(float* __restrict__ losses, T* __restrict__ logits,
                                     const int32_t* __restrict__ targets, int64_t V, bool backward, float scale) {
  T* row = logits + blockIdx.x * V;
  const int64_t target = targets[blockIdx.x];
  // Read before block_merge's barrier, hence before any thread rewrites the row.
  const float target_logit = threadIdx.x == 0 ? to_f(row[target]) : 0.0f;
  const MaxSum st = row_stats<T, kVectorised>(row, V);
  const float lse = st.m + logf(st.s);
  if (threadIdx.x == 0) losses[blockIdx.x] = lse - target_logit;
  if (backward) row_gradient<T, kVectorised>(row, V, lse, target, scale);
}

template <typename T, bool kVectorised>
__global__ void shard_finish_kernel(float* __restrict__ losses, T* __restrict__ logits,
                                    const float* __restrict__ mx, const float* __restrict__ sum,
                                    const float* __restrict__ target_logit, const int32_t* __restrict__ targets,
                                    int64_t V_local, int64_t vocab_begin, float scale) {
  const float l = mx[blockIdx.x] + logf(sum[blockIdx.x]);
  if (threadIdx.x == 0) losses[blockIdx.x] = l - target_logit[blockIdx.x];
  row_gradient<T, kVectorised>(logits + blockIdx.x * V_local, V_local, l,
                               int64_t{targets[blockIdx.x]} - vocab_begin, scale);
}

__global__ void shard_losses_kernel(float* __restrict__ losses, const float* __restrict__ mx,
                                    const float* __restrict__ sum, const float* __restrict__ target_logit, int64_t N) {
  const int64_t n = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (n < N) losses[n] = mx[n] + logf(sum[n]) - target_logit[n];
}

// Enough threads for about 8 elements each, a multiple of 32, at most kMaxThreads.
int row_threads(int64_t V) {
  return static_cast<int>(std::clamp<int64_t>(ceil_div(ceil_div(V, kVec), 32) * 32, 32, kMaxThreads));
}

bool vectorised(const void* logits, int64_t V) { return V % kVec == 0 && vec::aligned(logits, 16); }

}  // namespace

template <typename T>
void cross_entropy(float* losses, T* logits, const int32_t* targets, int64_t N, int64_t V, bool backward,
                   float scale, cudaStream_t stream) {
  if (N <= 0) return;
  const unsigned grid = static_cast<unsigned>(N);
  if (vectorised(logits, V)) {
    cross_entropy_kernel<T, true><<<grid, row_threads(V), 0, stream>>>(losses, logits, targets, V, backward, scale);
  } else {
    cross_entropy_kernel<T, false><<<grid, row_threads(V), 0, stream>>>(losses, logits, targets, V, backward, scale);
  }
  KUMIKO_CUDA_LAUNCH_CHECK();
}

template <typename T>
void cross_entropy_shard_finish(float* losses, T* logits, const float* mx, const float* sum,
                                const float* target_logit, const int32_t* targets, int64_t N, int64_t V_local,
                                int64_t vocab_begin, bool backward, float scale, cudaStream_t stream) {
  if (N <= 0) return;
  if (!backward) {
    shard_losses_kernel<<<static_cast<unsigned>(ceil_div(N, 256)), 256, 0, stream>>>(losses, mx, sum, target_logit,
                                                                                      N);
  } else if (vectorised(logits, V_local)) {
    shard_finish_kernel<T, true><<<static_cast<unsigned>(N), row_threads(V_local), 0, stream>>>(
        losses, logits, mx, sum, target_logit, targets, V_local, vocab_begin, scale);
  } else {
    shard_finish_kernel<T, false><<<static_cast<unsigned>(N), row_threads(V_local), 0, stream>>>(
        losses, logits, mx, sum, target_logit, targets, V_local, vocab_begin, scale);
  }
  KUMIKO_CUDA_LAUNCH_CHECK();
}

#define KUMIKO_INSTANTIATE(T)                                                                                   \
  template void cross_entropy<T>(float*, T*, const int32_t*, int64_t, int64_t, bool, float, cudaStream_t);     \
  template void cross_entropy_shard_finish<T>(float*, T*, const float*, const float*, const float*,             \
                                              const int32_t*, int64_t, int64_t, int64_t, bool, float, cudaStream_t);
KUMIKO_INSTANTIATE(float)
KUMIKO_INSTANTIATE(bf16)
#undef KUMIKO_INSTANTIATE

}  // namespace kumiko::cuda
