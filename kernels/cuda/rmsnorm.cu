// RMSNorm forward and backward (kumiko::cpu::rmsnorm_*), fp32 arithmetic; the same
// structure as layernorm.cu.
//
// Forward. C <= 1024: one warp per row, the row held in registers (lane l owns the
// vectors l, l + 32, ...). C > 1024: one block per row, the row cached in shared memory
// as fp32, laid out [kN][C / kN] (conflict-free); every thread reads back only the
// entries it wrote. rstd = 1 / sqrt(mean(x^2) + eps), then out = x rstd w.
//
// Backward, with s = rstd: dx += s (dout w) - x s^3 mean(dout w x); dw += dout x s.
// The rows are cut into chunks whose number depends only on N and on the path
// (vec::row_chunks): one warp (C <= 1024) or one block (C > 1024) per chunk walks its
// rows in order and accumulates dw for the columns it owns; the chunk's partial sums go
// to the workspace [chunks, C], which a second kernel adds in chunk order into dw. No
// atomics: the result is a fixed function of the inputs and (N, C).
//
// Vector accesses (16 bytes: 4 floats or 8 bf16) when C is a multiple of the vector
// length and every row pointer is 16-byte aligned; element-wise otherwise.
#include "kernels/cuda/rmsnorm.cuh"

#include "kernels/cuda/vector_util.cuh"

namespace kumiko::cuda {

namespace {

using vec::load_f;
using vec::store_f;

constexpr int kWarpMaxC = 1024;           // widest row handled by one warp
constexpr int kWarpsPerBlock = 8;         // forward warp path: rows per block
constexpr int kBackwardWarps = 4;         // backward warp path: chunks per block
constexpr int kBlockMaxThreads = 512;     // block path
constexpr int64_t kWarpMaxChunks = 1024;  // backward chunk caps (workspace [chunks, C])
constexpr int64_t kBlockMaxChunks = 256;
constexpr int64_t kMaxGrid = 65535;  // rows beyond grid-stride

bool warp_path(int64_t C) { return C <= kWarpMaxC; }

vec::RowChunks chunks_for(int64_t N, int64_t C) {
  return vec::row_chunks(N, warp_path(C) ? kWarpMaxChunks : kBlockMaxChunks);
}

int block_threads(int nvec) {
  return std::min(kBlockMaxThreads, std::max(32, int(ceil_div(nvec, 32)) * 32));
}

template <typename T, int kN>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    rms_forward_warp(T* __restrict__ out, float* __restrict__ rstd, const T* __restrict__ x,
                     const T* __restrict__ w, int64_t N, int C, float eps) {
  constexpr int kMaxVec = kWarpMaxC / (32 * kN);
  const int lane = threadIdx.x % 32, nvec = C / kN;
  const int64_t warps = int64_t{gridDim.x} * kWarpsPerBlock;
  for (int64_t row = int64_t{blockIdx.x} * kWarpsPerBlock + threadIdx.x / 32; row < N;
       row += warps) {
    const T* xr = x + row * C;
    T* outr = out + row * C;
    float v[kMaxVec][kN];
    float sq = 0.0f;
#pragma unroll
    for (int k = 0; k < kMaxVec; ++k) {
      const int j = lane + 32 * k;
      if (j < nvec) {
        load_f<kN>(xr, j, v[k]);
#pragma unroll
        for (int e = 0; e < kN; ++e) sq += v[k][e] * v[k][e];
      }
    }
    const float r = 1.0f / sqrtf(warp_sum(sq) / float(C) + eps);
#pragma unroll
    for (int k = 0; k < kMaxVec; ++k) {
      const int j = lane + 32 * k;
      if (j < nvec) {
        float wv[kN], o[kN];
        load_f<kN>(w, j, wv);
#pragma unroll
        for (int e = 0; e < kN; ++e) o[e] = v[k][e] * r * wv[e];
        store_f<kN>(outr, j, o);
      }
    }
    if (lane == 0) rstd[row] = r;
  }
}

// Dynamic shared memory: C floats.
template <typename T, int kN>
__global__ void __launch_bounds__(kBlockMaxThreads)
    rms_forward_block(T* __restrict__ out, float* __restrict__ rstd, const T* __restrict__ x,
                      const T* __restrict__ w, int64_t N, int C, float eps) {
  extern __shared__ float cache[];  // [kN][nvec]
  __shared__ float scratch[32];
  const int nvec = C / kN;
  for (int64_t row = blockIdx.x; row < N; row += gridDim.x) {
    const T* xr = x + row * C;
    T* outr = out + row * C;
    float sq = 0.0f;
    for (int j = threadIdx.x; j < nvec; j += blockDim.x) {
      float v[kN];
      load_f<kN>(xr, j, v);
#pragma unroll
      for (int e = 0; e < kN; ++e) {
        cache[e * nvec + j] = v[e];
        sq += v[e] * v[e];
      }
    }
    const float r = 1.0f / sqrtf(block_sum(sq, scratch) / float(C) + eps);
    for (int j = threadIdx.x; j < nvec; j += blockDim.x) {
      float wv[kN], o[kN];
      load_f<kN>(w, j, wv);
#pragma unroll
      for (int e = 0; e < kN; ++e) o[e] = cache[e * nvec + j] * r * wv[e];
      store_f<kN>(outr, j, o);
    }
    if (threadIdx.x == 0) rstd[row] = r;
  }
}

// One warp per chunk; partial: [chunks, C].
template <typename T, int kN>
__global__ void __launch_bounds__(kBackwardWarps * 32)
    rms_backward_warp(T* __restrict__ dx, float* __restrict__ partial, const T* __restrict__ dout,
                      const T* __restrict__ x, const T* __restrict__ w,
                      const float* __restrict__ rstd, int64_t N, int C, vec::RowChunks chunks) {
  constexpr int kMaxVec = kWarpMaxC / (32 * kN);
  const int lane = threadIdx.x % 32, nvec = C / kN;
  const int64_t chunk = int64_t{blockIdx.x} * kBackwardWarps + threadIdx.x / 32;
  if (chunk >= chunks.count) return;  // whole warps: no block-level barrier below
  float dw[kMaxVec][kN];
#pragma unroll
  for (int k = 0; k < kMaxVec; ++k) {
#pragma unroll
    for (int e = 0; e < kN; ++e) dw[k][e] = 0.0f;
  }
  const int64_t end = std::min(N, (chunk + 1) * chunks.rows);
  for (int64_t row = chunk * chunks.rows; row < end; ++row) {
    const T* xr = x + row * C;
    const T* gr = dout + row * C;
    T* dxr = dx + row * C;
    const float s = rstd[row];
    float xv[kMaxVec][kN], dnorm[kMaxVec][kN];
    float dot = 0.0f;
#pragma unroll
    for (int k = 0; k < kMaxVec; ++k) {
      const int j = lane + 32 * k;
      if (j < nvec) {
        float gv[kN], wv[kN];
        load_f<kN>(xr, j, xv[k]);
        load_f<kN>(gr, j, gv);
        load_f<kN>(w, j, wv);
#pragma unroll
        for (int e = 0; e < kN; ++e) {
          dnorm[k][e] = gv[e] * wv[e];
          dot += dnorm[k][e] * xv[k][e];
          dw[k][e] += gv[e] * (xv[k][e] * s);
        }
      }
    }
    const float coef = warp_sum(dot) / float(C) * s * s * s;
#pragma unroll
    for (int k = 0; k < kMaxVec; ++k) {
      const int j = lane + 32 * k;
      if (j < nvec) {
        float d[kN];
        load_f<kN>(dxr, j, d);
#pragma unroll
        for (int e = 0; e < kN; ++e) d[e] += dnorm[k][e] * s - xv[k][e] * coef;
        store_f<kN>(dxr, j, d);
      }
    }
  }
  float* pw = partial + chunk * C;
#pragma unroll
  for (int k = 0; k < kMaxVec; ++k) {
    const int j = lane + 32 * k;
    if (j < nvec) {
#pragma unroll
      for (int e = 0; e < kN; ++e) pw[j * kN + e] = dw[k][e];
    }
  }
}

// One block per chunk; dynamic shared memory: C floats, the block's dw sums, entry
// (e, j) owned by the thread that owns vector j.
template <typename T, int kN>
__global__ void __launch_bounds__(kBlockMaxThreads)
    rms_backward_block(T* __restrict__ dx, float* __restrict__ partial, const T* __restrict__ dout,
                       const T* __restrict__ x, const T* __restrict__ w,
                       const float* __restrict__ rstd, int64_t N, int C, vec::RowChunks chunks) {
  extern __shared__ float acc[];  // dw [kN][nvec]
  __shared__ float scratch[32];
  const int nvec = C / kN;
  const int64_t chunk = blockIdx.x;
  for (int j = threadIdx.x; j < nvec; j += blockDim.x) {
#pragma unroll
    for (int e = 0; e < kN; ++e) acc[e * nvec + j] = 0.0f;
  }
  const int64_t end = std::min(N, (chunk + 1) * chunks.rows);
  for (int64_t row = chunk * chunks.rows; row < end; ++row) {
    const T* xr = x + row * C;
    const T* gr = dout + row * C;
    T* dxr = dx + row * C;
    const float s = rstd[row];
    float dot = 0.0f;
    for (int j = threadIdx.x; j < nvec; j += blockDim.x) {
      float xv[kN], gv[kN], wv[kN];
      load_f<kN>(xr, j, xv);
      load_f<kN>(gr, j, gv);
      load_f<kN>(w, j, wv);
#pragma unroll
      for (int e = 0; e < kN; ++e) {
        dot += gv[e] * wv[e] * xv[e];
        acc[e * nvec + j] += gv[e] * (xv[e] * s);
      }
    }
    const float coef = block_sum(dot, scratch) / float(C) * s * s * s;
    // The row was just read by this same thread: the second read hits L1/L2.
    for (int j = threadIdx.x; j < nvec; j += blockDim.x) {
      float xv[kN], gv[kN], wv[kN], d[kN];
      load_f<kN>(xr, j, xv);
      load_f<kN>(gr, j, gv);
      load_f<kN>(w, j, wv);
      load_f<kN>(dxr, j, d);
#pragma unroll
      for (int e = 0; e < kN; ++e) d[e] += gv[e] * wv[e] * s - xv[e] * coef;
      store_f<kN>(dxr, j, d);
    }
  }
  __syncthreads();  // the coalesced write-out below reads other threads' entries
  float* pw = partial + chunk * C;
  for (int c = threadIdx.x; c < C; c += blockDim.x) pw[c] = acc[(c % kN) * nvec + c / kN];
}

template <typename T, int kN>
void forward_impl(T* out, float* rstd, const T* x, const T* w, int64_t N, int64_t C, float eps,
                  cudaStream_t stream) {
  const int nvec = int(C / kN);
  if (warp_path(C)) {
    const auto grid = static_cast<unsigned>(std::min(ceil_div(N, kWarpsPerBlock), kMaxGrid));
    rms_forward_warp<T, kN>
        <<<grid, kWarpsPerBlock * 32, 0, stream>>>(out, rstd, x, w, N, int(C), eps);
  } else {
    const size_t smem = size_t(C) * sizeof(float);
    vec::allow_dynamic_smem(rms_forward_block<T, kN>, smem, "rmsnorm_forward");
    const auto grid = static_cast<unsigned>(std::min(N, kMaxGrid));
    rms_forward_block<T, kN>
        <<<grid, block_threads(nvec), smem, stream>>>(out, rstd, x, w, N, int(C), eps);
  }
  KUMIKO_CUDA_LAUNCH_CHECK();
}

template <typename T, int kN>
void backward_impl(T* dx, float* partial, const T* dout, const T* x, const T* w, const float* rstd,
                   int64_t N, int64_t C, vec::RowChunks chunks, cudaStream_t stream) {
  const int nvec = int(C / kN);
  if (warp_path(C)) {
    const auto grid = static_cast<unsigned>(ceil_div(chunks.count, kBackwardWarps));
    rms_backward_warp<T, kN><<<grid, kBackwardWarps * 32, 0, stream>>>(dx, partial, dout, x, w,
                                                                       rstd, N, int(C), chunks);
  } else {
    const size_t smem = size_t(C) * sizeof(float);
    vec::allow_dynamic_smem(rms_backward_block<T, kN>, smem, "rmsnorm_backward");
    rms_backward_block<T, kN>
        <<<static_cast<unsigned>(chunks.count), block_threads(nvec), smem, stream>>>(
            dx, partial, dout, x, w, rstd, N, int(C), chunks);
  }
  KUMIKO_CUDA_LAUNCH_CHECK();
}

}  // namespace

template <typename T>
void rmsnorm_forward(T* out, float* rstd, const T* x, const T* w, int64_t N, int64_t C, float eps,
                     cudaStream_t stream) {
  if (N <= 0 || C <= 0) return;
  if (C % vec::kVec16<T> == 0 && vec::aligned16({out, x, w})) {
    forward_impl<T, vec::kVec16<T>>(out, rstd, x, w, N, C, eps, stream);
  } else {
    forward_impl<T, 1>(out, rstd, x, w, N, C, eps, stream);
  }
}

size_t rmsnorm_backward_workspace_bytes(int64_t N, int64_t C) {
  return size_t(chunks_for(N, C).count) * size_t(C) * sizeof(float);
}

template <typename T>
void rmsnorm_backward(T* dx, float* dw, const T* dout, const T* x, const T* w, const float* rstd,
                      int64_t N, int64_t C, void* workspace, cudaStream_t stream) {
  if (N <= 0 || C <= 0) return;
  const vec::RowChunks chunks = chunks_for(N, C);
  auto* partial = static_cast<float*>(workspace);
  if (C % vec::kVec16<T> == 0 && vec::aligned16({dx, dout, x, w})) {
    backward_impl<T, vec::kVec16<T>>(dx, partial, dout, x, w, rstd, N, C, chunks, stream);
  } else {
    backward_impl<T, 1>(dx, partial, dout, x, w, rstd, N, C, chunks, stream);
  }
  vec::launch_chunk_sum(dw, nullptr, partial, chunks.count, C, C, stream);
}

template void rmsnorm_forward<float>(float*, float*, const float*, const float*, int64_t, int64_t,
                                     float, cudaStream_t);
template void rmsnorm_forward<bf16>(bf16*, float*, const bf16*, const bf16*, int64_t, int64_t,
                                    float, cudaStream_t);
template void rmsnorm_backward<float>(float*, float*, const float*, const float*, const float*,
                                      const float*, int64_t, int64_t, void*, cudaStream_t);
template void rmsnorm_backward<bf16>(bf16*, float*, const bf16*, const bf16*, const bf16*,
                                     const float*, int64_t, int64_t, void*, cudaStream_t);

}  // namespace kumiko::cuda
