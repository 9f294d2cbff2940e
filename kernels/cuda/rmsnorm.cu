// RMSNorm forward and backward (kumiko::cpu::rmsnorm_*), fp32 arithmetic, on the warp
// and block paths of row_norm.cuh (the row in registers or in shared memory), like
// layernorm.cu.
//
// Forward: rstd = 1 / sqrt(mean(x^2) + eps), then out = x rstd w.
//
// Backward, with s = rstd: dx += s (dout w) - x s^3 mean(dout w x); dw += dout x s.
// Each chunk walks its rows in order and accumulates dw for the columns it owns; the
// chunk's partial sums go to the workspace [chunks, C], added in chunk order into dw.
//
// Vector accesses (16 bytes: 4 floats or 8 bf16) when C is a multiple of the vector
// length and every row pointer is 16-byte aligned; element-wise otherwise.
#include "kernels/cuda/rmsnorm.cuh"

#include "kernels/cuda/row_norm.cuh"

namespace kumiko::cuda {

namespace {

namespace rn = rownorm;
using rn::kLaneVecs;
using vec::load_f;
using vec::store_f;

struct Square {
  __device__ __forceinline__ float operator()(float x) const { return x * x; }
};

template <typename T, int kN>
__global__ void __launch_bounds__(rn::kWarpsPerBlock * 32)
    rms_forward_warp(T* __restrict__ out, float* __restrict__ rstd, const T* __restrict__ x,
                     const T* __restrict__ w, int64_t N, int C, float eps) {
  const int nvec = C / kN;
  const int64_t warps = int64_t{gridDim.x} * rn::kWarpsPerBlock;
  for (int64_t row = int64_t{blockIdx.x} * rn::kWarpsPerBlock + threadIdx.x / 32; row < N;
       row += warps) {
    const T* xr = x + row * C;
    T* outr = out + row * C;
    float v[kLaneVecs<kN>][kN];
    const float sq = rn::load_lane_row<kN>(xr, nvec, v, Square{});
    const float r = 1.0f / sqrtf(warp_sum(sq) / float(C) + eps);
    rn::for_lane_vectors<kN>(nvec, [&](int k, int j) {
      float wv[kN], o[kN];
      load_f<kN>(w, j, wv);
#pragma unroll
      for (int e = 0; e < kN; ++e) o[e] = v[k][e] * r * wv[e];
      store_f<kN>(outr, j, o);
    });
    if (threadIdx.x % 32 == 0) rstd[row] = r;
  }
}

// Dynamic shared memory: C floats, the row.
template <typename T, int kN>
__global__ void __launch_bounds__(rn::kBlockMaxThreads)
    rms_forward_block(T* __restrict__ out, float* __restrict__ rstd, const T* __restrict__ x,
                      const T* __restrict__ w, int64_t N, int C, float eps) {
  extern __shared__ float cache[];  // [kN][nvec]
  __shared__ float scratch[32];
  const int nvec = C / kN;
  for (int64_t row = blockIdx.x; row < N; row += gridDim.x) {
    const T* xr = x + row * C;
    T* outr = out + row * C;
    const float sq = rn::cache_block_row<kN>(cache, xr, nvec, Square{});
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
__global__ void __launch_bounds__(rn::kBackwardWarps * 32)
    rms_backward_warp(T* __restrict__ dx, float* __restrict__ partial, const T* __restrict__ dout,
                      const T* __restrict__ x, const T* __restrict__ w,
                      const float* __restrict__ rstd, int64_t N, int C, vec::RowChunks chunks) {
  const int nvec = C / kN;
  const int64_t chunk = rn::warp_chunk();
  if (chunk >= chunks.count) return;  // whole warps: no block-level barrier below
  float dw[kLaneVecs<kN>][kN] = {};
  const int64_t end = std::min(N, (chunk + 1) * chunks.rows);
  for (int64_t row = chunk * chunks.rows; row < end; ++row) {
    const T* xr = x + row * C;
    const T* gr = dout + row * C;
    T* dxr = dx + row * C;
    const float s = rstd[row];
    float xv[kLaneVecs<kN>][kN], dnorm[kLaneVecs<kN>][kN];
    float dot = 0.0f;
    rn::for_lane_vectors<kN>(nvec, [&](int k, int j) {
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
    });
    const float coef = warp_sum(dot) / float(C) * s * s * s;
    rn::add_lane_dx<kN>(dxr, nvec, [&](int k, int e) { return dnorm[k][e] * s - xv[k][e] * coef; });
  }
  rn::write_lane_partial<kN>(partial + chunk * C, nvec, dw);
}

// One block per chunk; dynamic shared memory: C floats, the block's dw sums.
template <typename T, int kN>
__global__ void __launch_bounds__(rn::kBlockMaxThreads)
    rms_backward_block(T* __restrict__ dx, float* __restrict__ partial, const T* __restrict__ dout,
                       const T* __restrict__ x, const T* __restrict__ w,
                       const float* __restrict__ rstd, int64_t N, int C, vec::RowChunks chunks) {
  extern __shared__ float acc[];  // dw [kN][nvec]
  __shared__ float scratch[32];
  const int nvec = C / kN;
  const int64_t chunk = blockIdx.x;
  rn::zero_block_sums<kN, 1>(acc, C);
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
    rn::add_block_dx<kN>(dxr, xr, gr, w, nvec,
                         [&](float xv, float gv, float wv) { return gv * wv * s - xv * coef; });
  }
  rn::write_block_partial<kN, 1>(partial + chunk * C, acc, C);
}

}  // namespace

template <typename T>
void rmsnorm_forward(T* out, float* rstd, const T* x, const T* w, int64_t N, int64_t C, float eps,
                     cudaStream_t stream) {
  if (N <= 0 || C <= 0) return;
  rn::with_width<T>(C, {out, x, w}, [&](auto width) {
    constexpr int kN = decltype(width)::value;
    rn::launch_forward(rms_forward_warp<T, kN>, rms_forward_block<T, kN>, N, C, kN,
                       "rmsnorm_forward", stream, out, rstd, x, w, N, int(C), eps);
  });
}

size_t rmsnorm_backward_workspace_bytes(int64_t N, int64_t C) {
  return rn::workspace_bytes(N, C, 1);
}

template <typename T>
void rmsnorm_backward(T* dx, float* dw, const T* dout, const T* x, const T* w, const float* rstd,
                      int64_t N, int64_t C, void* workspace, cudaStream_t stream) {
  if (N <= 0 || C <= 0) return;
  const vec::RowChunks chunks = rn::chunks_for(N, C);
  auto* partial = static_cast<float*>(workspace);
  rn::with_width<T>(C, {dx, dout, x, w}, [&](auto width) {
    constexpr int kN = decltype(width)::value;
    rn::launch_backward(rms_backward_warp<T, kN>, rms_backward_block<T, kN>, chunks, C, kN, 1,
                        "rmsnorm_backward", stream, dx, partial, dout, x, w, rstd, N, int(C),
                        chunks);
  });
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
