// LayerNorm forward and backward (kumiko::cpu::layernorm_*), fp32 arithmetic, on the
// warp and block paths of row_norm.cuh (the row in registers or in shared memory).
//
// Forward: two-pass statistics (mean, then mean squared deviation) over the held row,
// so a large mean costs no precision; out = (x - mean) rstd w + b.
//
// Backward: each chunk walks its rows in order, adds each row's dx, and accumulates
// dw/db for the columns it owns; the chunk's partial sums go to the workspace
// [chunks, 2C] (dw then db), added in chunk order into dw/db.
//
// Vector accesses (16 bytes: 4 floats or 8 bf16) when C is a multiple of the vector
// length and every row pointer is 16-byte aligned; element-wise otherwise.
#include "kernels/cuda/layernorm.cuh"

#include "kernels/cuda/row_norm.cuh"

namespace kumiko::cuda {

namespace {

namespace rn = rownorm;
using rn::kLaneVecs;
using vec::load_f;
using vec::store_f;

struct Identity {
  __device__ __forceinline__ float operator()(float x) const { return x; }
};

template <typename T, int kN>
__global__ void __launch_bounds__(rn::kWarpsPerBlock * 32)
    ln_forward_warp(T* __restrict__ out, float* __restrict__ mean, float* __restrict__ rstd,
                    const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ b,
                    int64_t N, int C, float eps) {
  const int nvec = C / kN;
  const int64_t warps = int64_t{gridDim.x} * rn::kWarpsPerBlock;
  for (int64_t row = int64_t{blockIdx.x} * rn::kWarpsPerBlock + threadIdx.x / 32; row < N;
       row += warps) {
    const T* xr = x + row * C;
    T* outr = out + row * C;
    float v[kLaneVecs<kN>][kN];
    const float m = warp_sum(rn::load_lane_row<kN>(xr, nvec, v, Identity{})) / float(C);
    float sq = 0.0f;
    rn::for_lane_vectors<kN>(nvec, [&](int k, int) {
#pragma unroll
      for (int e = 0; e < kN; ++e) sq += (v[k][e] - m) * (v[k][e] - m);
    });
    const float r = 1.0f / sqrtf(warp_sum(sq) / float(C) + eps);
    rn::for_lane_vectors<kN>(nvec, [&](int k, int j) {
      float wv[kN], bv[kN], o[kN];
      load_f<kN>(w, j, wv);
      load_f<kN>(b, j, bv);
#pragma unroll
      for (int e = 0; e < kN; ++e) o[e] = (v[k][e] - m) * r * wv[e] + bv[e];
      store_f<kN>(outr, j, o);
    });
    if (threadIdx.x % 32 == 0) {
      mean[row] = m;
      rstd[row] = r;
    }
  }
}

// Dynamic shared memory: C floats, the row.
template <typename T, int kN>
__global__ void __launch_bounds__(rn::kBlockMaxThreads)
    ln_forward_block(T* __restrict__ out, float* __restrict__ mean, float* __restrict__ rstd,
                     const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ b,
                     int64_t N, int C, float eps) {
  extern __shared__ float cache[];  // [kN][nvec]
  __shared__ float scratch[32];
  const int nvec = C / kN;
  for (int64_t row = blockIdx.x; row < N; row += gridDim.x) {
    const T* xr = x + row * C;
    T* outr = out + row * C;
    const float sum = rn::cache_block_row<kN>(cache, xr, nvec, Identity{});
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
__global__ void __launch_bounds__(rn::kBackwardWarps * 32)
    ln_backward_warp(T* __restrict__ dx, float* __restrict__ partial, const T* __restrict__ dout,
                     const T* __restrict__ x, const T* __restrict__ w,
                     const float* __restrict__ mean, const float* __restrict__ rstd, int64_t N,
                     int C, vec::RowChunks chunks) {
  const int nvec = C / kN;
  const int64_t chunk = rn::warp_chunk();
  if (chunk >= chunks.count) return;  // whole warps: no block-level barrier below
  float dw[kLaneVecs<kN>][kN] = {}, db[kLaneVecs<kN>][kN] = {};
  const int64_t end = std::min(N, (chunk + 1) * chunks.rows);
  for (int64_t row = chunk * chunks.rows; row < end; ++row) {
    const T* xr = x + row * C;
    const T* gr = dout + row * C;
    T* dxr = dx + row * C;
    const float m = mean[row], r = rstd[row];
    float xhat[kLaneVecs<kN>][kN], dnorm[kLaneVecs<kN>][kN];
    float sum_dnorm = 0.0f, sum_dnorm_xhat = 0.0f;
    rn::for_lane_vectors<kN>(nvec, [&](int k, int j) {
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
    });
    const float a = warp_sum(sum_dnorm) / float(C), bb = warp_sum(sum_dnorm_xhat) / float(C);
    rn::add_lane_dx<kN>(dxr, nvec,
                        [&](int k, int e) { return (dnorm[k][e] - a - xhat[k][e] * bb) * r; });
  }
  float* pw = partial + chunk * 2 * C;
  rn::write_lane_partial<kN>(pw, nvec, dw);
  rn::write_lane_partial<kN>(pw + C, nvec, db);
}

// One block per chunk; dynamic shared memory: 2C floats, the block's dw and db sums.
template <typename T, int kN>
__global__ void __launch_bounds__(rn::kBlockMaxThreads)
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
  rn::zero_block_sums<kN, 2>(acc, C);
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
    rn::add_block_dx<kN>(dxr, xr, gr, w, nvec, [&](float xv, float gv, float wv) {
      const float xhat = (xv - m) * r;
      return (gv * wv - a - xhat * bb) * r;
    });
  }
  rn::write_block_partial<kN, 2>(partial + chunk * 2 * C, acc, C);
}

}  // namespace

template <typename T>
void layernorm_forward(T* out, float* mean, float* rstd, const T* x, const T* w, const T* b,
                       int64_t N, int64_t C, float eps, cudaStream_t stream) {
  if (N <= 0 || C <= 0) return;
  rn::with_width<T>(C, {out, x, w, b}, [&](auto width) {
    constexpr int kN = decltype(width)::value;
    rn::launch_forward(ln_forward_warp<T, kN>, ln_forward_block<T, kN>, N, C, kN,
                       "layernorm_forward", stream, out, mean, rstd, x, w, b, N, int(C), eps);
  });
}

size_t layernorm_backward_workspace_bytes(int64_t N, int64_t C) {
  return rn::workspace_bytes(N, C, 2);
}

template <typename T>
void layernorm_backward(T* dx, float* dw, float* db, const T* dout, const T* x, const T* w,
                        const float* mean, const float* rstd, int64_t N, int64_t C, void* workspace,
                        cudaStream_t stream) {
  if (N <= 0 || C <= 0) return;
  const vec::RowChunks chunks = rn::chunks_for(N, C);
  auto* partial = static_cast<float*>(workspace);
  rn::with_width<T>(C, {dx, dout, x, w}, [&](auto width) {
    constexpr int kN = decltype(width)::value;
    rn::launch_backward(ln_backward_warp<T, kN>, ln_backward_block<T, kN>, chunks, C, kN, 2,
                        "layernorm_backward", stream, dx, partial, dout, x, w, mean, rstd, N,
                        int(C), chunks);
  });
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
