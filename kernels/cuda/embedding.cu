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

#include "kumiko/core/error.h"

namespace kumiko::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int kVec = 8;  // columns per vectorised thread

// Eight elements moved as 16-byte (bf16) or 2 x 16-byte (float) accesses.
template <typename T>
struct alignas(16) Pack8 {
  T v[kVec];
};

template <typename T>
__device__ __forceinline__ void load8(float (&dst)[kVec], const T* src) {
  const Pack8<T> p = *reinterpret_cast<const Pack8<T>*>(src);
#pragma unroll
  for (int i = 0; i < kVec; ++i) dst[i] = to_f(p.v[i]);
}

template <typename T>
__device__ __forceinline__ void store8(T* dst, const float (&src)[kVec]) {
  Pack8<T> p;
#pragma unroll
  for (int i = 0; i < kVec; ++i) p.v[i] = from_f<T>(src[i]);
  *reinterpret_cast<Pack8<T>*>(dst) = p;
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// Grid for a flat grid-stride loop over `work` items.
unsigned flat_blocks(int64_t work) {
  return static_cast<unsigned>(std::min<int64_t>(ceil_div(work, kThreads), int64_t{1} << 20));
}

// kVectorised: 8 columns per thread (C % 8 == 0, aligned pointers); otherwise one.
template <typename T, bool kVectorised>
__global__ void embedding_forward_kernel(T* __restrict__ out, const int32_t* __restrict__ ids,
                                         const T* __restrict__ table, const T* __restrict__ pos, int64_t N,
                                         int64_t T_, int64_t C) {
  constexpr int W = kVectorised ? kVec : 1;
  const int64_t groups = C / W;  // column groups per row
  const int64_t total = N * groups;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total;
       i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t n = i / groups, c = (i - n * groups) * W;
    const T* src = table + int64_t{ids[n]} * C + c;
    const T* p = pos ? pos + (n % T_) * C + c : nullptr;
    T* dst = out + n * C + c;
    if constexpr (kVectorised) {
      float a[kVec];
      load8(a, src);
      if (p) {
        float b[kVec];
        load8(b, p);
#pragma unroll
        for (int k = 0; k < kVec; ++k) a[k] += b[k];
      }
      store8(dst, a);
    } else {
      float a = to_f(*src);
      if (p) a += to_f(*p);
      *dst = from_f<T>(a);
    }
  }
}

template <typename T, bool kVectorised>
__global__ void embedding_backward_kernel(float* __restrict__ dtable, const T* __restrict__ dout,
                                          const int32_t* __restrict__ groups, int64_t C) {
  constexpr int W = kVectorised ? kVec : 1;
  const int64_t U = groups[0];
  const int64_t u = blockIdx.x;
  if (u >= U) return;
  const int64_t id = groups[1 + u];
  const int32_t* offsets = groups + 1 + U;
  const int32_t* positions = groups + 2 + 2 * U;
  const int64_t p0 = offsets[u], p1 = offsets[u + 1];
  float* drow = dtable + id * C;
  const int64_t col_groups = C / W;
  for (int64_t g = blockIdx.y * int64_t{blockDim.x} + threadIdx.x; g < col_groups;
       g += int64_t{gridDim.y} * blockDim.x) {
    const int64_t c = g * W;
    if constexpr (kVectorised) {
      float acc[kVec] = {};
      for (int64_t p = p0; p < p1; ++p) {
        float x[kVec];
        load8(x, dout + int64_t{positions[p]} * C + c);
#pragma unroll
        for (int k = 0; k < kVec; ++k) acc[k] += x[k];
      }
      float d[kVec];
      load8(d, drow + c);
#pragma unroll
      for (int k = 0; k < kVec; ++k) d[k] += acc[k];
      store8(drow + c, d);
    } else {
      float acc = 0.0f;
      for (int64_t p = p0; p < p1; ++p) acc += to_f(dout[int64_t{positions[p]} * C + c]);
      drow[c] += acc;
    }
  }
}

template <typename T, bool kVectorised>
__global__ void add_positions_backward_kernel(float* __restrict__ dpos, const T* __restrict__ dout, int64_t B,
                                              int64_t T_, int64_t C) {
  constexpr int W = kVectorised ? kVec : 1;
  const int64_t total = T_ * C / W;  // (t, column group) pairs; row t starts at t * C
  const int64_t stride_b = T_ * C;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total;
       i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t off = i * W;  // = t * C + c since W divides C
    if constexpr (kVectorised) {
      float acc[kVec] = {};
      for (int64_t b = 0; b < B; ++b) {
        float x[kVec];
        load8(x, dout + b * stride_b + off);
#pragma unroll
        for (int k = 0; k < kVec; ++k) acc[k] += x[k];
      }
      float d[kVec];
      load8(d, dpos + off);
#pragma unroll
      for (int k = 0; k < kVec; ++k) d[k] += acc[k];
      store8(dpos + off, d);
    } else {
      float acc = 0.0f;
      for (int64_t b = 0; b < B; ++b) acc += to_f(dout[b * stride_b + off]);
      dpos[off] += acc;
    }
  }
}

}  // namespace

template <typename T>
void embedding_forward(T* out, const int32_t* ids, const T* table, const T* pos, int64_t N, int64_t T_,
                       int64_t C, cudaStream_t stream) {
  if (N <= 0 || C <= 0) return;
  const bool vec = C % kVec == 0 && aligned16(out) && aligned16(table) && (!pos || aligned16(pos));
  const int64_t work = N * (vec ? C / kVec : C);
  if (vec) {
    embedding_forward_kernel<T, true><<<flat_blocks(work), kThreads, 0, stream>>>(out, ids, table, pos, N, T_, C);
  } else {
    embedding_forward_kernel<T, false><<<flat_blocks(work), kThreads, 0, stream>>>(out, ids, table, pos, N, T_, C);
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
  const bool vec = C % kVec == 0 && aligned16(dtable) && aligned16(dout);
  const int64_t col_groups = vec ? C / kVec : C;
  // Small rows get a block sized to them rather than idle threads.
  const int threads = static_cast<int>(std::min<int64_t>(kThreads, ceil_div(col_groups, 32) * 32));
  const dim3 grid(static_cast<unsigned>(max_unique),
                  static_cast<unsigned>(std::min<int64_t>(ceil_div(col_groups, threads), 65535)));
  if (vec) {
    embedding_backward_kernel<T, true><<<grid, threads, 0, stream>>>(dtable, dout, groups, C);
  } else {
    embedding_backward_kernel<T, false><<<grid, threads, 0, stream>>>(dtable, dout, groups, C);
  }
  KUMIKO_CUDA_LAUNCH_CHECK();
}

template <typename T>
void add_positions_backward(float* dpos, const T* dout, int64_t B, int64_t T_, int64_t C, cudaStream_t stream) {
  if (T_ <= 0 || C <= 0) return;
  const bool vec = C % kVec == 0 && aligned16(dpos) && aligned16(dout);
  const int64_t work = T_ * (vec ? C / kVec : C);
  if (vec) {
    add_positions_backward_kernel<T, true><<<flat_blocks(work), kThreads, 0, stream>>>(dpos, dout, B, T_, C);
  } else {
    add_positions_backward_kernel<T, false><<<flat_blocks(work), kThreads, 0, stream>>>(dpos, dout, B, T_, C);
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
