// LayerNorm forward and backward (kumiko::cpu::layernorm_*), fp32 arithmetic.
//
// Forward. C <= 1024: one warp per row, the row held in registers (lane l owns the
// vectors l, l + 32, ...). C > 1024: one block per row, the row cached in shared memory
// as fp32, laid out [kN][C / kN] so that a warp's accesses are conflict-free; every
// thread reads back only the entries it wrote, so the only barriers are those of the
// reductions. Statistics are two-pass (mean, then mean squared deviation) over the
// cached row, so a large mean costs no precision.
//
// Backward. The rows are cut into chunks whose number depends only on N and on the
// path (vec::row_chunks): one warp (C <= 1024) or one block (C > 1024) per chunk walks
// its rows in order, adds each row's dx, and accumulates dw/db for the columns it owns
// (registers, or shared memory owned column by column). The chunk's partial sums go to
// the workspace [chunks, 2C] (dw then db); a second kernel adds them in chunk order into
// dw/db. No atomics: the result is a fixed function of the inputs and (N, C).
//
// Vector accesses (16 bytes: 4 floats or 8 bf16) when C is a multiple of the vector
// length and every row pointer is 16-byte aligned; element-wise otherwise.
#include "kernels/cuda/layernorm.cuh"

#include "kernels/cuda/vector_util.cuh"

namespace kumiko::cuda {

namespace {

using vec::load_f;
using vec::store_f;

constexpr int kWarpMaxC = 1024;           // widest row handled by one warp
constexpr int kWarpsPerBlock = 8;         // forward warp path: rows per block
constexpr int kBackwardWarps = 4;         // backward warp path: chunks per block
constexpr int kBlockMaxThreads = 512;     // block path
constexpr int64_t kWarpMaxChunks = 1024;  // backward chunk caps (workspace [chunks, 2C])
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
    ln_forward_warp(T* __restrict__ out, float* __restrict__ mean, float* __restrict__ rstd,
                    const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ b,
                    int64_t N, int C, float eps) {
  constexpr int kMaxVec = kWarpMaxC / (32 * kN);
  const int lane = threadIdx.x % 32, nvec = C / kN;
  const int64_t warps = int64_t{gridDim.x} * kWarpsPerBlock;
  for (int64_t row = int64_t{blockIdx.x} * kWarpsPerBlock + threadIdx.x / 32; row < N;
       row += warps) {
    const T* xr = x + row * C;
    T* outr = out + row * C;
    float v[kMaxVec][kN];
    float sum = 0.0f;
#pragma unroll
    for (int k = 0; k < kMaxVec; ++k) {
      const int j = lane + 32 * k;
      if (j < nvec) {
        load_f<kN>(xr, j, v[k]);
#pragma unroll
        for (int e = 0; e < kN; ++e) sum += v[k][e];
      }
    }
    const float m = warp_sum(sum) / float(C);
    float sq = 0.0f;
#pragma unroll
    for (int k = 0; k < kMaxVec; ++k) {
      if (lane + 32 * k < nvec) {
#pragma unroll
        for (int e = 0; e < kN; ++e) sq += (v[k][e] - m) * (v[k][e] - m);
      }
    }
    const float r = 1.0f / sqrtf(warp_sum(sq) / float(C) + eps);
#pragma unroll
    for (int k = 0; k < kMaxVec; ++k) {
      const int j = lane + 32 * k;
      if (j < nvec) {
        float wv[kN], bv[kN], o[kN];
        load_f<kN>(w, j, wv);
        load_f<kN>(b, j, bv);
#pragma unroll
        for (int e = 0; e < kN; ++e) o[e] = (v[k][e] - m) * r * wv[e] + bv[e];
        store_f<kN>(outr, j, o);
      }
    }
    if (lane == 0) {
      mean[row] = m;
      rstd[row] = r;
    }
  }
}

// Dynamic shared memory: C floats.
template <typename T, int kN>
__global__ void __launch_bounds__(kBlockMaxThreads)
    ln_forward_block(T* __restrict__ out, float* __restrict__ mean, float* __restrict__ rstd,
                     const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ b,
                     int64_t N, int C, float eps) {
  extern __shared__ float cache[];  // [kN][nvec]
  __shared__ float scratch[32];
  const int nvec = C / kN;
  for (int64_t row = blockIdx.x; row < N; row += gridDim.x) {
    const T* xr = x + row * C;
    T* outr = out + row * C;
    float sum = 0.0f;
    for (int j = threadIdx.x; j < nvec; j += blockDim.x) {
      float v[kN];
      load_f<kN>(xr, j, v);
#pragma unroll
      for (int e = 0; e < kN; ++e) {
        cache[e * nvec + j] = v[e];
        sum += v[e];
      }
    }
    const float m = block_sum(sum, scratch) / float(C);
    float sq = 0.0f;
    for (int j = threadIdx.x; j < nvec; j += blockDim.x) {
#pragma unroll
      for (int e = 0; e < kN; ++e) {
        const float d = cache[e * nvec + j] - m;
        sq += d * d;
      }
    }
    const float r = 1.0f / sqrtf(block_sum(sq, scratch) / float(C) + eps);
    for (int j = threadIdx.x; j < nvec; j += blockDim.x) {
      float wv[kN], bv[kN], o[kN];
      load_f<kN>(w, j, wv);
      load_f<kN>(b, j, bv);
#pragma unroll
      for (int e = 0; e < kN; ++e) o[e] = (cache[e * nvec + j] - m) * r * wv[e] + bv[e];
      store_f<kN>(outr, j, o);
    }
    if (threadIdx.x == 0) {
      mean[row] = m;
      rstd[row] = r;
    }
  }
}

// One warp per chunk; partial: [chunks, 2C] (dw then db).
template <typename T, int kN>
__global__ void __launch_bounds__(kBackwardWarps * 32)
    ln_backward_warp(T* __restrict__ dx, float* __restrict__ partial, const T* __restrict__ dout,
                     const T* __restrict__ x, const T* __restrict__ w,
                     const float* __restrict__ mean, const float* __restrict__ rstd, int64_t N,
                     int C, vec::RowChunks chunks) {
  constexpr int kMaxVec = kWarpMaxC / (32 * kN);
  const int lane = threadIdx.x % 32, nvec = C / kN;
  const int64_t chunk = int64_t{blockIdx.x} * kBackwardWarps + threadIdx.x / 32;
  if (chunk >= chunks.count) return;  // whole warps: no block-level barrier below
  float dw[kMaxVec][kN], db[kMaxVec][kN];
#pragma unroll
  for (int k = 0; k < kMaxVec; ++k) {
#pragma unroll
    for (int e = 0; e < kN; ++e) dw[k][e] = db[k][e] = 0.0f;
  }
  const int64_t end = std::min(N, (chunk + 1) * chunks.rows);
  for (int64_t row = chunk * chunks.rows; row < end; ++row) {
    const T* xr = x + row * C;
    const T* gr = dout + row * C;
    T* dxr = dx + row * C;
    const float m = mean[row], r = rstd[row];
    float xhat[kMaxVec][kN], dnorm[kMaxVec][kN];
    float sum_dnorm = 0.0f, sum_dnorm_xhat = 0.0f;
#pragma unroll
    for (int k = 0; k < kMaxVec; ++k) {
      const int j = lane + 32 * k;
      if (j < nvec) {
        float xv[kN], gv[kN], wv[kN];
        load_f<kN>(xr, j, xv);
        load_f<kN>(gr, j, gv);
        load_f<kN>(w, j, wv);
#pragma unroll
        for (int e = 0; e < kN; ++e) {
          xhat[k][e] = (xv[e] - m) * r;
          dnorm[k][e] = gv[e] * wv[e];
          sum_dnorm += dnorm[k][e];
          sum_dnorm_xhat += dnorm[k][e] * xhat[k][e];
          dw[k][e] += gv[e] * xhat[k][e];
          db[k][e] += gv[e];
        }
      }
    }
    const float a = warp_sum(sum_dnorm) / float(C), bb = warp_sum(sum_dnorm_xhat) / float(C);
#pragma unroll
    for (int k = 0; k < kMaxVec; ++k) {
      const int j = lane + 32 * k;
      if (j < nvec) {
        float d[kN];
        load_f<kN>(dxr, j, d);
#pragma unroll
        for (int e = 0; e < kN; ++e) d[e] += (dnorm[k][e] - a - xhat[k][e] * bb) * r;
        store_f<kN>(dxr, j, d);
      }
    }
  }
  float* pw = partial + chunk * 2 * C;
  float* pb = pw + C;
#pragma unroll
  for (int k = 0; k < kMaxVec; ++k) {
    const int j = lane + 32 * k;
    if (j < nvec) {
#pragma unroll
      for (int e = 0; e < kN; ++e) {
        pw[j * kN + e] = dw[k][e];
        pb[j * kN + e] = db[k][e];
      }
    }
  }
}

// One block per chunk; dynamic shared memory: 2C floats, the block's dw and db sums,
// entry (e, j) owned by the thread that owns vector j.
template <typename T, int kN>
__global__ void __launch_bounds__(kBlockMaxThreads)
    ln_backward_block(T* __restrict__ dx, float* __restrict__ partial, const T* __restrict__ dout,
                      const T* __restrict__ x, const T* __restrict__ w,
                      const float* __restrict__ mean, const float* __restrict__ rstd, int64_t N,
                      int C, vec::RowChunks chunks) {
  extern __shared__ float acc[];  // dw [kN][nvec], then db [kN][nvec]
  __shared__ float2 scratch[32];
  const int nvec = C / kN;
  float* acc_dw = acc;
  float* acc_db = acc + C;
  const int64_t chunk = blockIdx.x;
  for (int i = threadIdx.x; i < nvec; i += blockDim.x) {
#pragma unroll
    for (int e = 0; e < kN; ++e) acc_dw[e * nvec + i] = acc_db[e * nvec + i] = 0.0f;
  }
  const int64_t end = std::min(N, (chunk + 1) * chunks.rows);
  for (int64_t row = chunk * chunks.rows; row < end; ++row) {
    const T* xr = x + row * C;
    const T* gr = dout + row * C;
    T* dxr = dx + row * C;
    const float m = mean[row], r = rstd[row];
    float2 sums = make_float2(0.0f, 0.0f);  // sum dnorm, sum dnorm * xhat
    for (int j = threadIdx.x; j < nvec; j += blockDim.x) {
      float xv[kN], gv[kN], wv[kN];
      load_f<kN>(xr, j, xv);
      load_f<kN>(gr, j, gv);
      load_f<kN>(w, j, wv);
#pragma unroll
      for (int e = 0; e < kN; ++e) {
        const float xhat = (xv[e] - m) * r, dnorm = gv[e] * wv[e];
        sums.x += dnorm;
        sums.y += dnorm * xhat;
        acc_dw[e * nvec + j] += gv[e] * xhat;
        acc_db[e * nvec + j] += gv[e];
      }
    }
    sums = vec::block_sum2(sums, scratch);
    const float a = sums.x / float(C), bb = sums.y / float(C);
    // The row was just read by this same thread: the second read hits L1/L2.
    for (int j = threadIdx.x; j < nvec; j += blockDim.x) {
      float xv[kN], gv[kN], wv[kN], d[kN];
      load_f<kN>(xr, j, xv);
      load_f<kN>(gr, j, gv);
      load_f<kN>(w, j, wv);
      load_f<kN>(dxr, j, d);
#pragma unroll
      for (int e = 0; e < kN; ++e) {
        const float xhat = (xv[e] - m) * r;
        d[e] += (gv[e] * wv[e] - a - xhat * bb) * r;
      }
      store_f<kN>(dxr, j, d);
    }
  }
  __syncthreads();  // the coalesced write-out below reads other threads' entries
  float* pw = partial + chunk * 2 * C;
  float* pb = pw + C;
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    const int s = (c % kN) * nvec + c / kN;
    pw[c] = acc_dw[s];
    pb[c] = acc_db[s];
  }
}

template <typename T, int kN>
void forward_impl(T* out, float* mean, float* rstd, const T* x, const T* w, const T* b, int64_t N,
                  int64_t C, float eps, cudaStream_t stream) {
  const int nvec = int(C / kN);
  if (warp_path(C)) {
    const auto grid = static_cast<unsigned>(std::min(ceil_div(N, kWarpsPerBlock), kMaxGrid));
    ln_forward_warp<T, kN>
        <<<grid, kWarpsPerBlock * 32, 0, stream>>>(out, mean, rstd, x, w, b, N, int(C), eps);
  } else {
    const size_t smem = size_t(C) * sizeof(float);
    vec::allow_dynamic_smem(ln_forward_block<T, kN>, smem, "layernorm_forward");
    const auto grid = static_cast<unsigned>(std::min(N, kMaxGrid));
    ln_forward_block<T, kN>
        <<<grid, block_threads(nvec), smem, stream>>>(out, mean, rstd, x, w, b, N, int(C), eps);
  }
  KUMIKO_CUDA_LAUNCH_CHECK();
}

template <typename T, int kN>
void backward_impl(T* dx, float* partial, const T* dout, const T* x, const T* w, const float* mean,
                   const float* rstd, int64_t N, int64_t C, vec::RowChunks chunks,
                   cudaStream_t stream) {
  const int nvec = int(C / kN);
  if (warp_path(C)) {
    const auto grid = static_cast<unsigned>(ceil_div(chunks.count, kBackwardWarps));
    ln_backward_warp<T, kN><<<grid, kBackwardWarps * 32, 0, stream>>>(dx, partial, dout, x, w, mean,
                                                                      rstd, N, int(C), chunks);
  } else {
    const size_t smem = 2 * size_t(C) * sizeof(float);
    vec::allow_dynamic_smem(ln_backward_block<T, kN>, smem, "layernorm_backward");
    ln_backward_block<T, kN>
        <<<static_cast<unsigned>(chunks.count), block_threads(nvec), smem, stream>>>(
            dx, partial, dout, x, w, mean, rstd, N, int(C), chunks);
  }
  KUMIKO_CUDA_LAUNCH_CHECK();
}

}  // namespace

template <typename T>
void layernorm_forward(T* out, float* mean, float* rstd, const T* x, const T* w, const T* b,
                       int64_t N, int64_t C, float eps, cudaStream_t stream) {
  if (N <= 0 || C <= 0) return;
  if (C % vec::kVec16<T> == 0 && vec::aligned16({out, x, w, b})) {
    forward_impl<T, vec::kVec16<T>>(out, mean, rstd, x, w, b, N, C, eps, stream);
  } else {
    forward_impl<T, 1>(out, mean, rstd, x, w, b, N, C, eps, stream);
  }
}

size_t layernorm_backward_workspace_bytes(int64_t N, int64_t C) {
  return size_t(chunks_for(N, C).count) * 2 * size_t(C) * sizeof(float);
}

template <typename T>
void layernorm_backward(T* dx, float* dw, float* db, const T* dout, const T* x, const T* w,
                        const float* mean, const float* rstd, int64_t N, int64_t C, void* workspace,
                        cudaStream_t stream) {
  if (N <= 0 || C <= 0) return;
  const vec::RowChunks chunks = chunks_for(N, C);
  auto* partial = static_cast<float*>(workspace);
  if (C % vec::kVec16<T> == 0 && vec::aligned16({dx, dout, x, w})) {
    backward_impl<T, vec::kVec16<T>>(dx, partial, dout, x, w, mean, rstd, N, C, chunks, stream);
  } else {
    backward_impl<T, 1>(dx, partial, dout, x, w, mean, rstd, N, C, chunks, stream);
  }
  vec::launch_chunk_sum(dw, db, partial, chunks.count, 2 * C, C, stream);
}

template void layernorm_forward<float>(float*, float*, float*, const float*, const float*,
                                       const float*, int64_t, int64_t, float, cudaStream_t);
template void layernorm_forward<bf16>(bf16*, float*, float*, const bf16*, const bf16*, const bf16*,
                                      int64_t, int64_t, float, cudaStream_t);
template void layernorm_backward<float>(float*, float*, float*, const float*, const float*,
                                        const float*, const float*, const float*, int64_t, int64_t,
                                        void*, cudaStream_t);
template void layernorm_backward<bf16>(bf16*, float*, float*, const bf16*, const bf16*, const bf16*,
                                       const float*, const float*, int64_t, int64_t, void*,
                                       cudaStream_t);

}  // namespace kumiko::cuda
