#pragma once
// Internal (nvcc only): what layernorm.cu and rmsnorm.cu share. Each keeps its four
// kernels (its statistics and gradient formulas); this header holds the path choice and
// its constants, the ownership of a row's vectors, the backward chunking and partial-sum
// write-out, and the launchers. Rows of C elements, fp32 arithmetic, two paths chosen by
// C alone:
//   - warp path (C <= kWarpMaxC): one warp per row (forward) or per chunk of rows
//     (backward); the row lives in registers, lane l owning the vectors l, l + 32, ...
//     (for_lane_vectors), so arrays indexed by the lane's vector k stay in registers;
//   - block path: one block per row (forward) or per chunk (backward); the row, or the
//     chunk's weight-gradient sums, live in dynamic shared memory as fp32 laid out
//     [kN][C / kN], entry (e, j) at e * nvec + j: a warp's accesses are conflict-free,
//     and every entry is touched only by the thread that owns vector j until the
//     write-out (write_block_partial), so the only barriers are those of the reductions.
// Backward: the rows are cut into chunks whose number depends only on N and on the path
// (chunks_for); each chunk writes its weight-gradient sums to a row of the workspace,
// which vec::launch_chunk_sum then adds in chunk order. No atomics: the result is a
// fixed function of the inputs and (N, C).
#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <type_traits>

#include "kernels/cuda/vector_util.cuh"

namespace kumiko::cuda::rownorm {

inline constexpr int kWarpMaxC = 1024;           // widest row handled by one warp
inline constexpr int kWarpsPerBlock = 8;         // forward warp path: rows per block
inline constexpr int kBackwardWarps = 4;         // backward warp path: chunks per block
inline constexpr int kBlockMaxThreads = 512;     // block path
inline constexpr int64_t kWarpMaxChunks = 1024;  // backward chunk caps (workspace rows)
inline constexpr int64_t kBlockMaxChunks = 256;
inline constexpr int64_t kMaxGrid = 65535;  // forward: rows beyond grid-stride

// Vectors of kN elements that one lane holds on the warp path.
template <int kN>
inline constexpr int kLaneVecs = kWarpMaxC / (32 * kN);

inline bool warp_path(int64_t C) { return C <= kWarpMaxC; }

inline vec::RowChunks chunks_for(int64_t N, int64_t C) {
  return vec::row_chunks(N, warp_path(C) ? kWarpMaxChunks : kBlockMaxChunks);
}

// Backward workspace: `arrays` weight-gradient arrays of C floats per chunk.
inline size_t workspace_bytes(int64_t N, int64_t C, int arrays) {
  return size_t(chunks_for(N, C).count) * size_t(arrays) * size_t(C) * sizeof(float);
}

// launch(std::integral_constant<int, kN>{}) with the vector width kN: 16-byte vectors
// when C is a multiple of their length and every row pointer is 16-byte aligned,
// single elements otherwise.
template <typename T, typename Launch>
void with_width(int64_t C, std::initializer_list<const void*> ptrs, Launch&& launch) {
  if (C % vec::kVec16<T> == 0 && vec::aligned16(ptrs)) {
    launch(std::integral_constant<int, vec::kVec16<T>>{});
  } else {
    launch(std::integral_constant<int, 1>{});
  }
}

inline int block_threads(int nvec) {
  return std::min(kBlockMaxThreads, std::max(32, int(ceil_div(nvec, 32)) * 32));
}

// ---- device side -----------------------------------------------------------------

// f(k, j) for the vectors j = lane + 32 k < nvec of a row that this lane owns on the
// warp path. Unrolled: k is a constant in each call.
template <int kN, typename F>
__device__ __forceinline__ void for_lane_vectors(int nvec, F&& f) {
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int k = 0; k < kLaneVecs<kN>; ++k) {
    const int j = lane + 32 * k;
    if (j < nvec) f(k, j);
  }
}

// Warp path: loads the lane's vectors of row xr into v and returns the lane's sum of
// f(x) over them, in order.
template <int kN, typename T, typename F>
__device__ __forceinline__ float load_lane_row(const T* xr, int nvec, float (&v)[kLaneVecs<kN>][kN],
                                               F&& f) {
  float s = 0.0f;
  for_lane_vectors<kN>(nvec, [&](int k, int j) {
    vec::load_f<kN>(xr, j, v[k]);
#pragma unroll
    for (int e = 0; e < kN; ++e) s += f(v[k][e]);
  });
  return s;
}

// Block path: caches this thread's vectors of row xr as fp32 in cache [kN][nvec] and
// returns the thread's sum of f(x) over them, in order.
template <int kN, typename T, typename F>
__device__ __forceinline__ float cache_block_row(float* cache, const T* xr, int nvec, F&& f) {
  float s = 0.0f;
  for (int j = threadIdx.x; j < nvec; j += blockDim.x) {
    float v[kN];
    vec::load_f<kN>(xr, j, v);
#pragma unroll
    for (int e = 0; e < kN; ++e) {
      cache[e * nvec + j] = v[e];
      s += f(v[e]);
    }
  }
  return s;
}

// Warp path: dx[(lane + 32 k) kN + e] += delta(k, e) over the lane's vectors of the row
// (read, updated in fp32, rounded once).
template <int kN, typename T, typename F>
__device__ __forceinline__ void add_lane_dx(T* dxr, int nvec, F&& delta) {
  for_lane_vectors<kN>(nvec, [&](int k, int j) {
    float d[kN];
    vec::load_f<kN>(dxr, j, d);
#pragma unroll
    for (int e = 0; e < kN; ++e) d[e] += delta(k, e);
    vec::store_f<kN>(dxr, j, d);
  });
}

// Block path: dx += delta(x, dout, w) elementwise over this thread's vectors of the row.
// The row was just read by this same thread: the second read hits L1/L2.
template <int kN, typename T, typename F>
__device__ __forceinline__ void add_block_dx(T* dxr, const T* xr, const T* gr, const T* w, int nvec,
                                             F&& delta) {
  for (int j = threadIdx.x; j < nvec; j += blockDim.x) {
    float xv[kN], gv[kN], wv[kN], d[kN];
    vec::load_f<kN>(xr, j, xv);
    vec::load_f<kN>(gr, j, gv);
    vec::load_f<kN>(w, j, wv);
    vec::load_f<kN>(dxr, j, d);
#pragma unroll
    for (int e = 0; e < kN; ++e) d[e] += delta(xv[e], gv[e], wv[e]);
    vec::store_f<kN>(dxr, j, d);
  }
}

// Backward, warp path: the chunk of this warp (may be >= chunks.count: then idle).
__device__ __forceinline__ int64_t warp_chunk() {
  return int64_t{blockIdx.x} * kBackwardWarps + threadIdx.x / 32;
}

// Warp path: the lane's sums acc[k][e] of columns (lane + 32 k) kN + e to dst[0, C).
template <int kN>
__device__ __forceinline__ void write_lane_partial(float* dst, int nvec,
                                                   const float (&acc)[kLaneVecs<kN>][kN]) {
  for_lane_vectors<kN>(nvec, [&](int k, int j) {
#pragma unroll
    for (int e = 0; e < kN; ++e) dst[j * kN + e] = acc[k][e];
  });
}

// Block path: zeroes this thread's entries of kArrays [kN][nvec] arrays of C floats.
template <int kN, int kArrays>
__device__ __forceinline__ void zero_block_sums(float* acc, int C) {
  const int nvec = C / kN;
  for (int j = threadIdx.x; j < nvec; j += blockDim.x) {
#pragma unroll
    for (int a = 0; a < kArrays; ++a) {
#pragma unroll
      for (int e = 0; e < kN; ++e) acc[a * C + e * nvec + j] = 0.0f;
    }
  }
}

// Block path, after the chunk's rows: kArrays [kN][nvec] arrays of C floats in shared
// memory to dst[kArrays][C] in column order (coalesced). Starts with a barrier: the
// write-out reads other threads' entries.
template <int kN, int kArrays>
__device__ __forceinline__ void write_block_partial(float* dst, const float* acc, int C) {
  __syncthreads();
  const int nvec = C / kN;
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    const int s = (c % kN) * nvec + c / kN;
#pragma unroll
    for (int a = 0; a < kArrays; ++a) dst[a * C + c] = acc[a * C + s];
  }
}

// ---- launchers ---------------------------------------------------------------------

// Forward: warp_kernel with kWarpsPerBlock rows per block, or block_kernel with one
// block per row and C floats of dynamic shared memory; rows beyond kMaxGrid blocks
// grid-stride. `args` go to the kernel; `what` names the op in errors.
template <typename Kernel, typename... Args>
void launch_forward(Kernel* warp_kernel, Kernel* block_kernel, int64_t N, int64_t C, int kN,
                    const char* what, cudaStream_t stream, const Args&... args) {
  if (warp_path(C)) {
    const auto grid = static_cast<unsigned>(std::min(ceil_div(N, kWarpsPerBlock), kMaxGrid));
    warp_kernel<<<grid, kWarpsPerBlock * 32, 0, stream>>>(args...);
  } else {
    const size_t smem = size_t(C) * sizeof(float);
    vec::allow_dynamic_smem(block_kernel, smem, what);
    const auto grid = static_cast<unsigned>(std::min(N, kMaxGrid));
    block_kernel<<<grid, block_threads(int(C / kN)), smem, stream>>>(args...);
  }
  KUMIKO_CUDA_LAUNCH_CHECK();
}

// Backward: warp_kernel with kBackwardWarps chunks per block, or block_kernel with one
// block per chunk and `arrays` x C floats of dynamic shared memory.
template <typename Kernel, typename... Args>
void launch_backward(Kernel* warp_kernel, Kernel* block_kernel, vec::RowChunks chunks, int64_t C,
                     int kN, int arrays, const char* what, cudaStream_t stream,
                     const Args&... args) {
  if (warp_path(C)) {
    const auto grid = static_cast<unsigned>(ceil_div(chunks.count, kBackwardWarps));
    warp_kernel<<<grid, kBackwardWarps * 32, 0, stream>>>(args...);
  } else {
    const size_t smem = size_t(arrays) * size_t(C) * sizeof(float);
    vec::allow_dynamic_smem(block_kernel, smem, what);
    block_kernel<<<static_cast<unsigned>(chunks.count), block_threads(int(C / kN)), smem, stream>>>(
        args...);
  }
  KUMIKO_CUDA_LAUNCH_CHECK();
}

}  // namespace kumiko::cuda::rownorm
