// Token embedding lookup, learned positions, and their deterministic backward passes.
//
// forward: one thread per 8 columns of one output row (flat grid-stride index over
//   N x C/8), 16-byte loads when C % 8 == 0 and the pointers are aligned, otherwise
//   one thread per element; the position row is added in fp32 before the one rounding.
// backward: no atomics. The host groups the positions by token (embedding_groups);
//   block (u, y) owns distinct token u and a slice of columns, each thread sums its
//   columns over the token's positions in ascending order in fp32, then adds the sum
//   to dtable once. Every dtable row is written by exactly one thread per column.
// add_positions_backward: one thread per (t, column group) sums over b in order.
// Ids and groups are assumed valid (the host built and checked them).
#include "kernels/cuda/embedding.cuh"

#include <algorithm>
#include <limits>
#include <numeric>

#include "kernels/cuda/vector_util.cuh"
#include "kumiko/core/error.h"

namespace kumiko::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int kVec = 8;  // columns per vectorised thread (16-byte or 2 x 16-byte accesses)

// Grid for a flat grid-stride loop over `work` items.
unsigned flat_blocks(int64_t work) {
  return static_cast<unsigned>(std::min<int64_t>(ceil_div(work, kThreads), int64_t{1} << 20));
}

// kW columns per thread: kVec (C % kVec == 0, aligned pointers) or 1. Column group g
// of a row is its columns [g kW, (g + 1) kW).
template <typename T, int kW>
__global__ void embedding_forward_kernel(T* __restrict__ out, const int32_t* __restrict__ ids,
                                         const T* __restrict__ table, const T* __restrict__ pos, int64_t N,
                                         int64_t T_, int64_t C) {
  const int64_t groups = C / kW;  // column groups per row
  const int64_t total = N * groups;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total;
       i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t n = i / groups, g = i - n * groups;
    float a[kW];
    vec::load_f<kW>(table + int64_t{ids[n]} * C, g, a);
    if (pos) {
      float b[kW];
      vec::load_f<kW>(pos + (n % T_) * C, g, b);
#pragma unroll
      for (int k = 0; k < kW; ++k) a[k] += b[k];
    }
    vec::store_f<kW>(out + n * C, g, a);
  }
}

// Column group g of dst (fp32) += the sum over k < count of column group g of row(k),
// summed in fp32 in order of k.
template <int kW, typename Row>
__device__ __forceinline__ void add_rows_sum(float* dst, int64_t g, int64_t count, Row row) {
  float acc[kW] = {};
  for (int64_t k = 0; k < count; ++k) {
    float x[kW];
    vec::load_f<kW>(row(k), g, x);
#pragma unroll
    for (int e = 0; e < kW; ++e) acc[e] += x[e];
  }
  float d[kW];
  vec::load_f<kW>(dst, g, d);
#pragma unroll
  for (int e = 0; e < kW; ++e) d[e] += acc[e];
  vec::store_f<kW>(dst, g, d);
}

template <typename T, int kW>
__global__ void embedding_backward_kernel(float* __restrict__ dtable, const T* __restrict__ dout,
                                          const int32_t* __restrict__ groups, int64_t C) {
  const int64_t U = groups[0];
  const int64_t u = blockIdx.x;
  if (u >= U) return;
  const int64_t id = groups[1 + u];
  const int32_t* offsets = groups + 1 + U;
  const int32_t* positions = groups + 2 + 2 * U;
  const int64_t p0 = offsets[u], p1 = offsets[u + 1];
  const int64_t col_groups = C / kW;
  for (int64_t g = blockIdx.y * int64_t{blockDim.x} + threadIdx.x; g < col_groups;
       g += int64_t{gridDim.y} * blockDim.x) {
    add_rows_sum<kW>(dtable + id * C, g, p1 - p0,
                        [&](int64_t k) { return dout + int64_t{positions[p0 + k]} * C; });
  }
}

template <typename T, int kW>
__global__ void add_positions_backward_kernel(float* __restrict__ dpos, const T* __restrict__ dout, int64_t B,
                                              int64_t T_, int64_t C) {
  const int64_t total = T_ * C / kW;  // (t, column group) pairs; row t starts at t * C
  const int64_t stride_b = T_ * C;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total;
       i += int64_t{gridDim.x} * blockDim.x) {
    // Group i of dpos viewed as one row of T_ C elements (kW divides C).
    add_rows_sum<kW>(dpos, i, B, [&](int64_t b) { return dout + b * stride_b; });
  }
}

}  // namespace

template <typename T>
void embedding_forward(T* out, const int32_t* ids, const T* table, const T* pos, int64_t N, int64_t T_,
                       int64_t C, cudaStream_t stream) {
  if (N <= 0 || C <= 0) return;
  // A null pos counts as aligned.
  const bool vectorise = C % kVec == 0 && vec::aligned16({out, table, pos});
  const int64_t work = N * (vectorise ? C / kVec : C);
  if (vectorise) {
    embedding_forward_kernel<T, kVec><<<flat_blocks(work), kThreads, 0, stream>>>(out, ids, table, pos, N, T_, C);
  } else {
    embedding_forward_kernel<T, 1><<<flat_blocks(work), kThreads, 0, stream>>>(out, ids, table, pos, N, T_, C);
  }
  KUMIKO_CUDA_LAUNCH_CHECK();
}

std::vector<int32_t> embedding_groups(const int32_t* ids, int64_t N) {
  KUMIKO_CHECK(N >= 0 && N <= std::numeric_limits<int32_t>::max(), "embedding_groups: N = ", N,
               " does not fit the int32 position list");
  // Positions sorted by token id; stable, so ascending within a token.
  std::vector<int32_t> order(static_cast<size_t>(N));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [ids](int32_t a, int32_t b) { return ids[a] < ids[b]; });
  std::vector<int32_t> unique, offsets;
  for (int64_t i = 0; i < N; ++i) {
    const int32_t id = ids[order[static_cast<size_t>(i)]];
    if (unique.empty() || unique.back() != id) {
      unique.push_back(id);
      offsets.push_back(static_cast<int32_t>(i));
    }
  }
  offsets.push_back(static_cast<int32_t>(N));
  const size_t U = unique.size();
  std::vector<int32_t> out;
  out.reserve(2 + 2 * U + static_cast<size_t>(N));
  out.push_back(static_cast<int32_t>(U));
  out.insert(out.end(), unique.begin(), unique.end());
  out.insert(out.end(), offsets.begin(), offsets.end());
  out.insert(out.end(), order.begin(), order.end());
  return out;
}

template <typename T>
void embedding_backward(float* dtable, const T* dout, const int32_t* groups, int64_t max_unique, int64_t C,
                        cudaStream_t stream) {
  if (max_unique <= 0 || C <= 0) return;
  const bool vectorise = C % kVec == 0 && vec::aligned16({dtable, dout});
  const int64_t col_groups = vectorise ? C / kVec : C;
  // Small rows get a block sized to them rather than idle threads.
  const int threads = static_cast<int>(std::min<int64_t>(kThreads, ceil_div(col_groups, 32) * 32));
  const dim3 grid(static_cast<unsigned>(max_unique),
                  static_cast<unsigned>(std::min<int64_t>(ceil_div(col_groups, threads), 65535)));
  if (vectorise) {
    embedding_backward_kernel<T, kVec><<<grid, threads, 0, stream>>>(dtable, dout, groups, C);
  } else {
    embedding_backward_kernel<T, 1><<<grid, threads, 0, stream>>>(dtable, dout, groups, C);
  }
  KUMIKO_CUDA_LAUNCH_CHECK();
}

template <typename T>
void add_positions_backward(float* dpos, const T* dout, int64_t B, int64_t T_, int64_t C, cudaStream_t stream) {
  if (T_ <= 0 || C <= 0) return;
  const bool vectorise = C % kVec == 0 && vec::aligned16({dpos, dout});
  const int64_t work = T_ * (vectorise ? C / kVec : C);
  if (vectorise) {
    add_positions_backward_kernel<T, kVec><<<flat_blocks(work), kThreads, 0, stream>>>(dpos, dout, B, T_, C);
  } else {
    add_positions_backward_kernel<T, 1><<<flat_blocks(work), kThreads, 0, stream>>>(dpos, dout, B, T_, C);
  }
  KUMIKO_CUDA_LAUNCH_CHECK();
}

#define KUMIKO_INSTANTIATE(T)                                                                                   \
  template void embedding_forward<T>(T*, const int32_t*, const T*, const T*, int64_t, int64_t, int64_t,         \
                                     cudaStream_t);                                                             \
  template void embedding_backward<T>(float*, const T*, const int32_t*, int64_t, int64_t, cudaStream_t);        \
  template void add_positions_backward<T>(float*, const T*, int64_t, int64_t, int64_t, cudaStream_t);
KUMIKO_INSTANTIATE(float)
KUMIKO_INSTANTIATE(bf16)
#undef KUMIKO_INSTANTIATE

}  // namespace kumiko::cuda
