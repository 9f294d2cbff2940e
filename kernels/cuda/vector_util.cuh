#pragma once
// Internal helpers (nvcc only) of the pointwise, row-normalisation, embedding and
// cross-entropy kernels:
//   - load_f / store_f: kN elements moved in one vector access (16 or 8 bytes), or in
//     several 16-byte ones, and converted to or from fp32 registers;
//   - pointwise launcher: a grid-stride loop calling op.apply<kN>(i) on aligned vectors
//     and op.apply<1>(i) on the n % kN tail, or op.apply<1> throughout when a pointer
//     is not aligned (checked at run time by the launcher's caller); launch_map builds
//     such an op from a function of each element's fp32 inputs and checks the alignment;
//   - row chunks and the in-order chunk sum behind the deterministic dw/db reductions;
//   - block_sum2 and the dynamic shared memory opt-in used by the block-per-row kernels;
//   - cp.async (16-byte global -> shared copies, zero-filled when out of range), its
//     commit and wait, for the GEMM and attention pipelines.
#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <type_traits>
#include <utility>

#include "kernels/cuda/common.cuh"
#include "kumiko/core/error.h"

namespace kumiko::cuda::vec {

// 16 bytes global -> shared without registers (.cg: cached in L2 only). valid = false
// reads nothing and zero-fills the 16 bytes (gmem must still be a valid address).
__device__ __forceinline__ void cp_async16(uint32_t smem, const void* gmem, bool valid) {
  const int bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem), "l"(gmem), "r"(bytes)
               : "memory");
}
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
  cp_async16(static_cast<uint32_t>(__cvta_generic_to_shared(smem)), gmem, valid);
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
// Waits until at most kPending of this thread's committed groups are still in flight.
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
}

// Elements of T in one 16-byte access.
template <typename T>
inline constexpr int kVec16 = int(16 / sizeof(T));

inline bool aligned(const void* p, uintptr_t bytes) {
  return reinterpret_cast<uintptr_t>(p) % bytes == 0;
}
inline bool aligned16(std::initializer_list<const void*> ptrs) {
  return std::all_of(ptrs.begin(), ptrs.end(), [](const void* p) { return aligned(p, 16); });
}

// The vector type of 32-bit words that holds `kBytes` bytes: one vector access.
template <int kBytes>
struct Word;
template <>
struct Word<16> {
  using type = uint4;
  static constexpr int kWords = 4;
};
template <>
struct Word<8> {
  using type = uint2;
  static constexpr int kWords = 2;
};
__device__ __forceinline__ void split_words(const uint4& w, unsigned (&u)[4]) {
  u[0] = w.x, u[1] = w.y, u[2] = w.z, u[3] = w.w;
}
__device__ __forceinline__ void split_words(const uint2& w, unsigned (&u)[2]) {
  u[0] = w.x, u[1] = w.y;
}
__device__ __forceinline__ uint4 join_words(const unsigned (&u)[4]) {
  return make_uint4(u[0], u[1], u[2], u[3]);
}
__device__ __forceinline__ uint2 join_words(const unsigned (&u)[2]) {
  return make_uint2(u[0], u[1]);
}

// Vector j of p: elements [j kN, (j + 1) kN). They travel as 32-bit words unpacked with
// shifts (bf16 -> fp32 is exact: the bf16 bits are the high half of the float). The
// access indexes a pointer to the word vector type by j: written as (p + j kN) cast to
// that type, the compiler sometimes splits it into scalar accesses.
//
// v[0..kN) = vector j of p as fp32; for kN > 1 p must be aligned to kN * sizeof(T), or
// to 16 bytes when the vector is wider (then moved as kN * sizeof(T) / 16 accesses).
template <int kN, typename T>
__device__ __forceinline__ void load_f(const T* p, int64_t j, float (&v)[kN]) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, bf16>);
  if constexpr (kN == 1) {
    v[0] = to_f(p[j]);
  } else if constexpr (kN > kVec16<T>) {
    constexpr int kParts = kN / kVec16<T>;
    static_assert(kN % kVec16<T> == 0);
#pragma unroll
    for (int q = 0; q < kParts; ++q) {
      float part[kVec16<T>];
      load_f<kVec16<T>>(p, j * kParts + q, part);
#pragma unroll
      for (int i = 0; i < kVec16<T>; ++i) v[q * kVec16<T> + i] = part[i];
    }
  } else {
    using W = Word<int(sizeof(T)) * kN>;
    unsigned u[W::kWords];
    split_words(reinterpret_cast<const typename W::type*>(p)[j], u);
#pragma unroll
    for (int i = 0; i < W::kWords; ++i) {
      if constexpr (std::is_same_v<T, float>) {
        v[i] = __uint_as_float(u[i]);
      } else {
        v[2 * i] = __uint_as_float(u[i] << 16);
        v[2 * i + 1] = __uint_as_float(u[i] & 0xFFFF0000u);
      }
    }
  }
}
// Vector j of p = v[0..kN) rounded to T (nearest even for bf16); same alignment.
template <int kN, typename T>
__device__ __forceinline__ void store_f(T* p, int64_t j, const float (&v)[kN]) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, bf16>);
  if constexpr (kN == 1) {
    p[j] = from_f<T>(v[0]);
  } else if constexpr (kN > kVec16<T>) {
    constexpr int kParts = kN / kVec16<T>;
    static_assert(kN % kVec16<T> == 0);
#pragma unroll
    for (int q = 0; q < kParts; ++q) {
      float part[kVec16<T>];
#pragma unroll
      for (int i = 0; i < kVec16<T>; ++i) part[i] = v[q * kVec16<T> + i];
      store_f<kVec16<T>>(p, j * kParts + q, part);
    }
  } else {
    using W = Word<int(sizeof(T)) * kN>;
    unsigned u[W::kWords];
#pragma unroll
    for (int i = 0; i < W::kWords; ++i) {
      if constexpr (std::is_same_v<T, float>) {
        u[i] = __float_as_uint(v[i]);
      } else {
        u[i] = unsigned{__bfloat16_as_ushort(__float2bfloat16_rn(v[2 * i]))} |
               unsigned{__bfloat16_as_ushort(__float2bfloat16_rn(v[2 * i + 1]))} << 16;
      }
    }
    reinterpret_cast<typename W::type*>(p)[j] = join_words(u);
  }
}

// ---- pointwise -------------------------------------------------------------------

inline constexpr int kPointwiseThreads = 256;
// Enough blocks to fill any current GPU several times over; larger n grid-strides.
inline constexpr int64_t kPointwiseMaxBlocks = 8192;

template <int kN, typename Op>
__global__ void __launch_bounds__(kPointwiseThreads) pointwise_kernel(Op op, int64_t n) {
  const int64_t stride = int64_t{gridDim.x} * blockDim.x;
  const int64_t first = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  const int64_t nvec = n / kN;
  for (int64_t i = first; i < nvec; i += stride) op.template apply<kN>(i);
  if constexpr (kN > 1) {
    for (int64_t i = nvec * kN + first; i < n; i += stride) op.template apply<1>(i);
  }
}

// op.apply<kN>(j) handles elements [j kN, (j + 1) kN) (vector j). When `vectorise`,
// calls it for every whole vector and op.apply<1>(i) for the n % kN tail elements;
// otherwise op.apply<1>(i) for every element. Each index is visited by
// exactly one thread, which reads all its inputs before writing: outputs may alias
// inputs element for element.
template <int kN, typename Op>
void launch_pointwise(const Op& op, int64_t n, bool vectorise, cudaStream_t stream) {
  if (n <= 0) return;
  const int64_t items = vectorise ? ceil_div(n, kN) : n;
  const auto blocks =
      static_cast<unsigned>(std::min(ceil_div(items, kPointwiseThreads), kPointwiseMaxBlocks));
  if (vectorise) {
    pointwise_kernel<kN><<<blocks, kPointwiseThreads, 0, stream>>>(op, n);
  } else {
    pointwise_kernel<1><<<blocks, kPointwiseThreads, 0, stream>>>(op, n);
  }
  KUMIKO_CUDA_LAUNCH_CHECK();
}

// The op of launch_map: out[i] = f(in[0][i], ..., in[kIn - 1][i]) in fp32, the result
// rounded once to Tout. All of an element's inputs are read before its output is
// written, so out may alias an input.
template <typename Tout, typename Tin, int kIn, typename F>
struct Map {
  Tout* out;
  const Tin* in[kIn];
  F f;

  template <int kM>
  __device__ void apply(int64_t j) const {
    float v[kIn][kM], o[kM];
#pragma unroll
    for (int q = 0; q < kIn; ++q) load_f<kM>(in[q], j, v[q]);
#pragma unroll
    for (int e = 0; e < kM; ++e) o[e] = call(v, e, std::make_integer_sequence<int, kIn>{});
    store_f<kM>(out, j, o);
  }

  template <int kM, int... kQ>
  __device__ __forceinline__ float call(const float (&v)[kIn][kM], int e,
                                        std::integer_sequence<int, kQ...>) const {
    return f(v[kQ][e]...);
  }
};

// out[i] = f(in[0][i], ...) for i < n (f: a functor with a __device__ operator() taking
// kIn floats). Vectors are 16 bytes of the wider of Tout and Tin (the narrower side
// moves 8), used when every pointer is aligned to its vector; element-wise otherwise.
template <typename F, typename Tout, typename Tin, int kIn>
void launch_map(const F& f, Tout* out, const Tin* const (&in)[kIn], int64_t n,
                cudaStream_t stream) {
  constexpr int kN = int(16 / (sizeof(Tout) > sizeof(Tin) ? sizeof(Tout) : sizeof(Tin)));
  Map<Tout, Tin, kIn, F> op{out, {}, f};
  bool vectorise = aligned(out, kN * sizeof(Tout));
  for (int q = 0; q < kIn; ++q) {
    op.in[q] = in[q];
    vectorise = vectorise && aligned(in[q], kN * sizeof(Tin));
  }
  launch_pointwise<kN>(op, n, vectorise, stream);
}

// ---- row reductions ----------------------------------------------------------------

// Sum of two values over the block (blockDim.x a multiple of 32); every thread gets
// both. `scratch` holds 32 float2 of shared memory; the call synchronizes the block.
__device__ __forceinline__ float2 block_sum2(float2 v, float2* scratch) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  v.x = warp_sum(v.x);
  v.y = warp_sum(v.y);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : make_float2(0.0f, 0.0f);
  return make_float2(warp_sum(v.x), warp_sum(v.y));
}

// Rows [k * rows, min(N, (k + 1) * rows)) form chunk k. A function of N and the cap
// only (never of the device), so reductions built on it are bitwise reproducible.
struct RowChunks {
  int64_t count;  // number of chunks
  int64_t rows;   // rows per chunk (the last one may be shorter)
};
inline RowChunks row_chunks(int64_t N, int64_t max_chunks) {
  constexpr int64_t kMinRows = 4;  // smaller chunks would only enlarge the workspace
  if (N <= 0) return {0, 1};
  const int64_t rows = std::max(kMinRows, ceil_div(N, max_chunks));
  return {ceil_div(N, rows), rows};
}

inline constexpr int kSumCols = 32;    // columns per block of chunk_sum_kernel
inline constexpr int kSumGroups = 16;  // chunk groups per column

// dst[j] += sum_k partial[k, j] over `chunks` rows of `width` floats, where dst is
// dst0[j] for j < split and dst1[j - split] beyond. Thread (x, y) sums the chunks
// k = y, y + 16, ... of column x in order; the 16 group sums are then added in y order:
// a fixed order for given (chunks, width). (A template so that every .cu including this
// header may instantiate it without clashing symbols.)
template <int kGroups>
__global__ void __launch_bounds__(kSumCols* kGroups)
    chunk_sum_kernel(float* dst0, float* dst1, const float* __restrict__ partial, int64_t chunks,
                     int64_t width, int64_t split) {
  __shared__ float groups[kGroups][kSumCols + 1];
  const int64_t j = int64_t{blockIdx.x} * kSumCols + threadIdx.x;
  float s = 0.0f;
  if (j < width) {
    for (int64_t k = threadIdx.y; k < chunks; k += kGroups) s += partial[k * width + j];
  }
  groups[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && j < width) {
    float total = 0.0f;
#pragma unroll
    for (int g = 0; g < kGroups; ++g) total += groups[g][threadIdx.x];
    float* d = j < split ? dst0 + j : dst1 + (j - split);
    *d += total;
  }
}

// Launches chunk_sum_kernel (a template only so that files not using it do not
// instantiate the kernel).
template <int kGroups = kSumGroups>
void launch_chunk_sum(float* dst0, float* dst1, const float* partial, int64_t chunks, int64_t width,
                      int64_t split, cudaStream_t stream) {
  if (chunks <= 0 || width <= 0) return;
  const auto blocks = static_cast<unsigned>(ceil_div(width, kSumCols));
  chunk_sum_kernel<kGroups>
      <<<blocks, dim3(kSumCols, kGroups), 0, stream>>>(dst0, dst1, partial, chunks, width, split);
  KUMIKO_CUDA_LAUNCH_CHECK();
}

// Lets `kernel` use `bytes` of dynamic shared memory, opting in above the 48 KiB
// default; throws when the device offers less (`what` names the op and its size).
template <typename Kernel>
void allow_dynamic_smem(Kernel* kernel, size_t bytes, const char* what) {
  constexpr size_t kDefault = 48 * 1024;
  constexpr size_t kStatic = 1024;  // margin for the kernels' static shared memory
  if (bytes <= kDefault) return;
  int device = 0, optin = 0;
  KUMIKO_CUDA_CHECK(cudaGetDevice(&device));
  KUMIKO_CUDA_CHECK(
      cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  KUMIKO_CHECK(bytes + kStatic <= size_t(optin), what, " needs ", bytes,
               " bytes of shared memory per block; the device allows ", optin);
  KUMIKO_CUDA_CHECK(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
}

}  // namespace kumiko::cuda::vec
