// Causal grouped-query flash attention on CUDA cores, fp32 math (FlashAttention, Dao et al.
// 2022; backward as in FlashAttention-2, Dao 2023). Inputs (float or bf16) are converted to
// fp32 when copied into shared memory; no [T, T] matrix exists anywhere.
//
// Tiles: 64 queries x 64 keys (one size for both, so that the causal diagonal of a query
// tile is exactly one key tile). Shared tiles are fp32 [64][D + 4]: the padding keeps rows
// 16-byte aligned for float4 reads and makes the stride 4 words mod 32, so the 8 rows a
// quarter-warp reads with one float4 load fall in distinct banks. The head dim is a
// template parameter (64 or 128: the width of the shared tiles and of the per-thread
// accumulators); a head dim hd < D that is a multiple of 8 runs on the next larger
// instantiation (hd <= 64 on D = 64, else D = 128) with columns hd..D-1 zero-filled.
//
// Thread mapping (256 threads as a 16 x 16 grid, tx = tid % 16, ty = tid / 16): every
// kernel has "owner" rows (queries in the forward and dQ kernels, keys in the dK/dV
// kernel) and "other" rows. Thread (ty, tx) computes the 4 x 4 micro-tile of scores
// between owner rows ty*4 + a and other rows tx + 16*c (float4 reads over the head dim;
// the owner rows are the same for a half-warp, a broadcast), keeps its probabilities in
// registers, stores them transposed as buf[other][owner], and then owns the output block
// rows ty*4 + a, columns n*64 + tx*4 + e (n < D/64, e < 4): acc += buf^T * tile, reading
// one float4 of buf and D/64 float4 of the tile per row. The 16 threads sharing ty are 16
// consecutive lanes, so row reductions are xor-shuffles with offsets 8..1.
//
// Forward: block = (query tile, q head, batch); loops over key tiles 0..diagonal (the
// diagonal tile is masked, later tiles are never visited); online softmax in base 2
// (scores multiplied by log2(e)/sqrt(D)): running max m per row, per-thread partial
// sums l (rescaled with m, reduced once at the end), accumulator rescaled by exp2(m_old -
// m_new). out = acc / l, lse = (m + log2 l) * ln 2 (natural log of the scaled scores).
// Backward (deterministic, no atomics, dqkv overwritten):
//   1. delta[b, h, t] = rowsum(dout * out) into the workspace (one warp per row);
//   2. dK/dV: block = (key tile, kv head, batch) loops over the q heads of its group and
//      the query tiles from the diagonal on, recomputing P = exp(s - lse) and dS = P (dP -
//      delta) from the saved lse; dV += P^T dO, dK += dS^T Q in registers;
//   3. dQ: block = (query tile, q head, batch) loops over key tiles up to the diagonal,
//      dQ += dS K.
// Query tiles are scheduled longest-first (the last tiles have the most key tiles).
//
// Dispatch: bf16 calls with D = 64 or 128 and 16-byte aligned pointers run on the tensor-core
// kernels of attention_tc.cu (after this file's delta pre-pass in the backward); everything
// else runs here. attention_*_simt force this file's kernels (tests compare the two paths).
#include <string>

#include "kernels/cuda/attention.cuh"

#include <climits>
#include <cmath>
#include <type_traits>

#include "kernels/cuda/attention_tc.cuh"
#include "kernels/cuda/vector_util.cuh"
#include "kumiko/core/error.h"

namespace kumiko::cuda {

namespace {

constexpr int kTile = 64;          // queries per query tile and keys per key tile
constexpr int kThreads = 256;      // 16 x 16 thread grid
constexpr int kLdBuf = kTile + 4;  // row stride of the transposed probability buffer
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

template <int D>
constexpr int ld() {
  return D + 4;
}
// Shared bytes: forward Q, K, V tiles (P aliases K); backward Q, dO, K, V tiles plus the
// lse and delta of the query tile (the dK/dV kernel also has its own P/dS buffer; the dQ
// kernel puts dS over V).
template <int D>
constexpr size_t forward_smem() {
  return size_t(3 * kTile * ld<D>()) * sizeof(float);
}
template <int D>
constexpr size_t dkdv_smem() {
  return size_t(4 * kTile * ld<D>() + kTile * kLdBuf + 2 * kTile) * sizeof(float);
}
template <int D>
constexpr size_t dq_smem() {
  return size_t(4 * kTile * ld<D>() + 2 * kTile) * sizeof(float);
}

using Shape = AttentionShape;  // hd <= the template D

// Rows [0, n_rows) of a head slice (row r at src + r * stride, hd elements) into the fp32
// shared tile dst [kTile][D + 4]. Rows >= n_rows and columns >= hd are zero, so padding
// rows and columns add exact zeros to every dot product and never produce NaN.
template <int D, typename T>
__device__ __forceinline__ void load_tile(float* dst, const T* src, int64_t stride, int n_rows,
                                          int hd) {
#pragma unroll 4
  for (int idx = threadIdx.x; idx < kTile * D; idx += kThreads) {
    const int r = idx / D, c = idx % D;
    float v = 0.0f;
    if (r < n_rows && c < hd) v = to_f(src[r * stride + c]);
    dst[r * ld<D>() + c] = v;
  }
}

// s[a][c] = sum_d A[a][d] * B[c][d], row a of A at a_rows + a * ld<D>() (owner rows
// ty*4 + a, contiguous) and row c of B at b_rows + c * 16 * ld<D>() (other rows tx + 16c).
template <int D>
__device__ __forceinline__ void dot_tile(float (&s)[4][4], const float* a_rows,
                                         const float* b_rows) {
#pragma unroll
  for (int a = 0; a < 4; ++a)
#pragma unroll
    for (int c = 0; c < 4; ++c) s[a][c] = 0.0f;
#pragma unroll 4
  for (int d = 0; d < D; d += 4) {
    float4 x[4], y[4];
#pragma unroll
    for (int a = 0; a < 4; ++a) x[a] = *reinterpret_cast<const float4*>(a_rows + a * ld<D>() + d);
#pragma unroll
    for (int c = 0; c < 4; ++c)
      y[c] = *reinterpret_cast<const float4*>(b_rows + c * 16 * ld<D>() + d);
#pragma unroll
    for (int a = 0; a < 4; ++a)
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        float t = s[a][c];
        t = fmaf(x[a].x, y[c].x, t);
        t = fmaf(x[a].y, y[c].y, t);
        t = fmaf(x[a].z, y[c].z, t);
        t = fmaf(x[a].w, y[c].w, t);
        s[a][c] = t;
      }
  }
}

// Stores the micro-tile transposed, buf[other row tx + 16c][owner row ty*4 + a], one
// float4 per c (conflict-free: the stride kLdBuf is 4 words mod 32).
__device__ __forceinline__ void store_transposed(float* buf, const float (&v)[4][4], int tx,
                                                 int ty) {
#pragma unroll
  for (int c = 0; c < 4; ++c)
    *reinterpret_cast<float4*>(buf + (tx + 16 * c) * kLdBuf + ty * 4) =
        make_float4(v[0][c], v[1][c], v[2][c], v[3][c]);
}

// acc[a][n][e] += sum_r buf[r][ty*4 + a] * tile[r][n*64 + tx*4 + e] over the kTile rows r.
// buf_col = buf + ty * 4, tile_col = tile + tx * 4.
template <int D>
__device__ __forceinline__ void accumulate(float (&acc)[4][D / 64][4], const float* buf_col,
                                           const float* tile_col) {
#pragma unroll 4
  for (int r = 0; r < kTile; ++r) {
    const float4 w = *reinterpret_cast<const float4*>(buf_col + r * kLdBuf);
    const float wa[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
    for (int n = 0; n < D / 64; ++n) {
      const float4 y = *reinterpret_cast<const float4*>(tile_col + r * ld<D>() + n * 64);
#pragma unroll
      for (int a = 0; a < 4; ++a) {
        acc[a][n][0] = fmaf(wa[a], y.x, acc[a][n][0]);
        acc[a][n][1] = fmaf(wa[a], y.y, acc[a][n][1]);
        acc[a][n][2] = fmaf(wa[a], y.z, acc[a][n][2]);
        acc[a][n][3] = fmaf(wa[a], y.w, acc[a][n][3]);
      }
    }
  }
}

// Writes rows ty*4 + a (those below n_rows) of a [kTile, hd] block: row r at dst + r *
// stride, column n*64 + tx*4 + e gets acc[a][n][e] * mul.
template <int D, typename T>
__device__ __forceinline__ void store_block(T* dst, int64_t stride, int n_rows, int hd,
                                            const float (&acc)[4][D / 64][4], float mul, int tx,
                                            int ty) {
#pragma unroll
  for (int a = 0; a < 4; ++a) {
    const int r = ty * 4 + a;
    if (r >= n_rows) continue;
    T* row = dst + r * stride;
#pragma unroll
    for (int n = 0; n < D / 64; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int col = n * 64 + tx * 4 + e;
        if (col < hd) row[col] = from_f<T>(acc[a][n][e] * mul);
      }
  }
}


template <typename T, int D>
__global__ void __launch_bounds__(kThreads)
    attention_forward_kernel(T* out, float* lse, const T* qkv, Shape s) {
  constexpr int LD = ld<D>(), NC = D / 64;
  static_assert(kTile * LD >= kTile * kLdBuf, "P must fit in the K tile it aliases");
  extern __shared__ float4 smem4[];
  float* Qs = reinterpret_cast<float*>(smem4);  // [kTile][LD] query tile
  float* Ks = Qs + kTile * LD;                  // [kTile][LD] key tile; then P^T [key][query]
  float* Vs = Ks + kTile * LD;                  // [kTile][LD] value tile

  const int qt = gridDim.x - 1 - blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const int g = h / s.group, i0 = qt * kTile;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const T* base = qkv + int64_t(b) * s.T * s.W;

  load_tile<D>(Qs, base + int64_t(i0) * s.W + int64_t(h) * s.hd, s.W, s.T - i0, s.hd);

  float acc[4][NC][4];
  float m[4], l[4];  // running max (base-2 units) of row ty*4+a; this thread's partial sum
#pragma unroll
  for (int a = 0; a < 4; ++a) {
    m[a] = -INFINITY;
    l[a] = 0.0f;
#pragma unroll
    for (int n = 0; n < NC; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[a][n][e] = 0.0f;
  }

  for (int kt = 0; kt <= qt; ++kt) {
    const int j0 = kt * kTile;
    __syncthreads();  // the previous tile's reads of P (over K) and V are done
    load_tile<D>(Ks, base + int64_t(j0) * s.W + int64_t(s.Hq + g) * s.hd, s.W, s.T - j0, s.hd);
    load_tile<D>(Vs, base + int64_t(j0) * s.W + int64_t(s.Hq + s.Hkv + g) * s.hd, s.W, s.T - j0,
                 s.hd);
    __syncthreads();

    float p[4][4];
    dot_tile<D>(p, Qs + ty * 4 * LD, Ks + tx * LD);
#pragma unroll
    for (int a = 0; a < 4; ++a) {
      const int i = i0 + ty * 4 + a;
      float mx = -INFINITY;
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        // Only the diagonal tile has keys after the query. Every row keeps key j0 <= i, so
        // the tile maximum is finite.
        p[a][c] = (j0 + tx + 16 * c > i) ? -INFINITY : p[a][c] * s.scale_log2;
        mx = fmaxf(mx, p[a][c]);
      }
      const float m_new = fmaxf(m[a], warp_max<16>(mx));
      const float corr = exp2f(m[a] - m_new);  // 0 on the first tile (m = -inf)
      m[a] = m_new;
      float sum = 0.0f;
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        p[a][c] = exp2f(p[a][c] - m_new);
        sum += p[a][c];
      }
      l[a] = l[a] * corr + sum;
#pragma unroll
      for (int n = 0; n < NC; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[a][n][e] *= corr;
    }
    __syncthreads();  // every thread is done reading K before P overwrites it
    store_transposed(Ks, p, tx, ty);
    __syncthreads();
    accumulate<D>(acc, Ks + ty * 4, Vs + tx * 4);
  }

  float inv[4];
#pragma unroll
  for (int a = 0; a < 4; ++a) {
    const float total = warp_sum<16>(l[a]);
    inv[a] = 1.0f / total;
    const int i = i0 + ty * 4 + a;
    if (tx == 0 && i < s.T) lse[(int64_t(b) * s.Hq + h) * s.T + i] = (m[a] + log2f(total)) * kLn2;
  }
#pragma unroll
  for (int a = 0; a < 4; ++a)
#pragma unroll
    for (int n = 0; n < NC; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[a][n][e] *= inv[a];
  store_block<D>(out + (int64_t(b) * s.T + i0) * s.OW + int64_t(h) * s.hd, s.OW, s.T - i0, s.hd,
                 acc, 1.0f, tx, ty);
}

// delta[b, h, t] = sum_d dout[b, t, h, d] * out[b, t, h, d]: one warp per (b, t, h), the
// row index (b * T + t) * Hq + h walking out contiguously.
template <typename T>
__global__ void attention_delta_kernel(float* delta, const T* dout, const T* out, int64_t rows,
                                       int T_, int Hq, int hd) {
  const int64_t row = int64_t(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  if (row >= rows) return;  // uniform over the warp
  const int lane = threadIdx.x % 32;
  const T* o = out + row * hd;
  const T* d = dout + row * hd;
  float sum = 0.0f;
  for (int c = lane; c < hd; c += 32) sum = fmaf(to_f(o[c]), to_f(d[c]), sum);
  sum = warp_sum(sum);
  if (lane == 0) {
    const int64_t h = row % Hq, bt = row / Hq, t = bt % T_, b = bt / T_;
    delta[(b * Hq + h) * T_ + t] = sum;
  }
}

// Loads lse (times log2 e) and delta of query rows i0.. of head h into shared memory;
// rows past T get 0 (their probabilities are masked to 0 anyway).
__device__ __forceinline__ void load_row_stats(float* lse_s, float* delta_s, const float* lse,
                                               const float* delta, int64_t bh, int i0, int T_) {
  if (threadIdx.x < kTile) {
    const int i = i0 + threadIdx.x;
    const bool valid = i < T_;
    lse_s[threadIdx.x] = valid ? lse[bh * T_ + i] * kLog2e : 0.0f;
    delta_s[threadIdx.x] = valid ? delta[bh * T_ + i] : 0.0f;
  }
}

template <typename T, int D>
__global__ void __launch_bounds__(kThreads)
    attention_dkdv_kernel(T* dqkv, const T* dout, const T* qkv, const float* lse,
                          const float* delta, Shape s) {
  constexpr int LD = ld<D>(), NC = D / 64;
  extern __shared__ float4 smem4[];
  float* Ks = reinterpret_cast<float*>(smem4);  // [kTile][LD] key tile (fixed)
  float* Vs = Ks + kTile * LD;                  // [kTile][LD] value tile (fixed)
  float* Qs = Vs + kTile * LD;                  // [kTile][LD] query tile
  float* dOs = Qs + kTile * LD;                 // [kTile][LD] dout tile
  float* buf = dOs + kTile * LD;                // [kTile query][kLdBuf]: P, then dS
  float* lse_s = buf + kTile * kLdBuf;          // [kTile] lse * log2(e) of the query tile
  float* delta_s = lse_s + kTile;               // [kTile]

  const int kt = blockIdx.x, g = blockIdx.y, b = blockIdx.z;  // kt = 0 has the most query tiles
  const int j0 = kt * kTile, n_tiles = gridDim.x;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const T* base = qkv + int64_t(b) * s.T * s.W;
  const T* dbase = dout + int64_t(b) * s.T * s.OW;

  load_tile<D>(Ks, base + int64_t(j0) * s.W + int64_t(s.Hq + g) * s.hd, s.W, s.T - j0, s.hd);
  load_tile<D>(Vs, base + int64_t(j0) * s.W + int64_t(s.Hq + s.Hkv + g) * s.hd, s.W, s.T - j0,
               s.hd);

  float dk[4][NC][4], dv[4][NC][4];  // key rows ty*4 + a, columns n*64 + tx*4 + e
#pragma unroll
  for (int a = 0; a < 4; ++a)
#pragma unroll
    for (int n = 0; n < NC; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) dk[a][n][e] = dv[a][n][e] = 0.0f;

  for (int hh = 0; hh < s.group; ++hh) {
    const int h = g * s.group + hh;
    for (int qt = kt; qt < n_tiles; ++qt) {
      const int i0 = qt * kTile;
      __syncthreads();  // the previous iteration is done with Qs, dOs, buf and the row stats
      load_tile<D>(Qs, base + int64_t(i0) * s.W + int64_t(h) * s.hd, s.W, s.T - i0, s.hd);
      load_tile<D>(dOs, dbase + int64_t(i0) * s.OW + int64_t(h) * s.hd, s.OW, s.T - i0, s.hd);
      load_row_stats(lse_s, delta_s, lse, delta, int64_t(b) * s.Hq + h, i0, s.T);
      __syncthreads();

      // Transposed scores: key rows ty*4 + a, query rows tx + 16c.
      float p[4][4], ds[4][4];
      dot_tile<D>(p, Ks + ty * 4 * LD, Qs + tx * LD);
      dot_tile<D>(ds, Vs + ty * 4 * LD, dOs + tx * LD);  // dP^T
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const int r = tx + 16 * c, i = i0 + r;
        const float lse_r = lse_s[r], delta_r = delta_s[r];
#pragma unroll
        for (int a = 0; a < 4; ++a) {
          const int j = j0 + ty * 4 + a;
          // Select, not multiply: exp2 of a masked score may overflow.
          p[a][c] = (i < s.T && j <= i) ? exp2f(fmaf(p[a][c], s.scale_log2, -lse_r)) : 0.0f;
          ds[a][c] = p[a][c] * (ds[a][c] - delta_r);
        }
      }
      store_transposed(buf, p, tx, ty);
      __syncthreads();
      accumulate<D>(dv, buf + ty * 4, dOs + tx * 4);
      __syncthreads();  // every thread is done reading P
      store_transposed(buf, ds, tx, ty);
      __syncthreads();
      accumulate<D>(dk, buf + ty * 4, Qs + tx * 4);
    }
  }

  T* dbase_k = dqkv + (int64_t(b) * s.T + j0) * s.W;
  store_block<D>(dbase_k + int64_t(s.Hq + g) * s.hd, s.W, s.T - j0, s.hd, dk, s.scale, tx, ty);
  store_block<D>(dbase_k + int64_t(s.Hq + s.Hkv + g) * s.hd, s.W, s.T - j0, s.hd, dv, 1.0f, tx, ty);
}

// One block per SM at D = 128 (shared memory), so the register budget may grow past 128.
template <typename T, int D>
__global__ void __launch_bounds__(kThreads, 1)
    attention_dq_kernel(T* dqkv, const T* dout, const T* qkv, const float* lse, const float* delta,
                        Shape s) {
  constexpr int LD = ld<D>(), NC = D / 64;
  static_assert(kTile * LD >= kTile * kLdBuf, "dS must fit in the V tile it aliases");
  extern __shared__ float4 smem4[];
  float* Qs = reinterpret_cast<float*>(smem4);  // [kTile][LD] query tile (fixed)
  float* dOs = Qs + kTile * LD;                 // [kTile][LD] dout tile (fixed)
  float* Ks = dOs + kTile * LD;                 // [kTile][LD] key tile
  float* Vs = Ks + kTile * LD;                  // [kTile][LD] value tile; then dS^T [key][query]
  float* lse_s = Vs + kTile * LD;               // [kTile] lse * log2(e)
  float* delta_s = lse_s + kTile;               // [kTile]

  const int qt = gridDim.x - 1 - blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const int g = h / s.group, i0 = qt * kTile;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const T* base = qkv + int64_t(b) * s.T * s.W;

  load_tile<D>(Qs, base + int64_t(i0) * s.W + int64_t(h) * s.hd, s.W, s.T - i0, s.hd);
  load_tile<D>(dOs, dout + (int64_t(b) * s.T + i0) * s.OW + int64_t(h) * s.hd, s.OW, s.T - i0,
               s.hd);
  load_row_stats(lse_s, delta_s, lse, delta, int64_t(b) * s.Hq + h, i0, s.T);

  float dq[4][NC][4];  // query rows ty*4 + a, columns n*64 + tx*4 + e
#pragma unroll
  for (int a = 0; a < 4; ++a)
#pragma unroll
    for (int n = 0; n < NC; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) dq[a][n][e] = 0.0f;

  for (int kt = 0; kt <= qt; ++kt) {
    const int j0 = kt * kTile;
    __syncthreads();  // the previous tile's reads of K and dS (over V) are done
    load_tile<D>(Ks, base + int64_t(j0) * s.W + int64_t(s.Hq + g) * s.hd, s.W, s.T - j0, s.hd);
    load_tile<D>(Vs, base + int64_t(j0) * s.W + int64_t(s.Hq + s.Hkv + g) * s.hd, s.W, s.T - j0,
                 s.hd);
    __syncthreads();

    // Query rows ty*4 + a, key rows tx + 16c.
    float p[4][4], ds[4][4];
    dot_tile<D>(p, Qs + ty * 4 * LD, Ks + tx * LD);
    dot_tile<D>(ds, dOs + ty * 4 * LD, Vs + tx * LD);  // dP
#pragma unroll
    for (int a = 0; a < 4; ++a) {
      const int r = ty * 4 + a, i = i0 + r;
      const float lse_r = lse_s[r], delta_r = delta_s[r];
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const int j = j0 + tx + 16 * c;
        p[a][c] = (i < s.T && j <= i) ? exp2f(fmaf(p[a][c], s.scale_log2, -lse_r)) : 0.0f;
        ds[a][c] = p[a][c] * (ds[a][c] - delta_r);
      }
    }
    __syncthreads();  // every thread is done reading V before dS overwrites it
    store_transposed(Vs, ds, tx, ty);
    __syncthreads();
    accumulate<D>(dq, Vs + ty * 4, Ks + tx * 4);
  }

  store_block<D>(dqkv + (int64_t(b) * s.T + i0) * s.W + int64_t(h) * s.hd, s.W, s.T - i0, s.hd, dq,
                 s.scale, tx, ty);
}

Shape make_shape(int64_t B, int64_t T_, int64_t Hq, int64_t Hkv, int64_t D) {
  KUMIKO_CHECK(B >= 0 && T_ >= 0, "attention: negative size B=", B, " T=", T_);
  KUMIKO_CHECK(Hq > 0 && Hkv > 0 && Hq % Hkv == 0, "attention: Hq=", Hq,
               " is not a multiple of Hkv=", Hkv);
  KUMIKO_CHECK(D > 0 && D <= 128 && D % 8 == 0, "attention: head dim ", D,
               " is not supported (CUDA kernels: a multiple of 8 up to 128)");
  KUMIKO_CHECK(T_ <= INT_MAX - kTile && Hq <= 65535 && B <= 65535,
               "attention: sizes too large (B=", B, " T=", T_, " Hq=", Hq, ")");
  Shape s;
  s.T = int(T_);
  s.Hq = int(Hq);
  s.Hkv = int(Hkv);
  s.hd = int(D);
  s.group = int(Hq / Hkv);
  s.W = (Hq + 2 * Hkv) * D;
  s.OW = Hq * D;
  s.scale = float(1.0 / std::sqrt(double(D)));
  s.scale_log2 = float(1.4426950408889634 / std::sqrt(double(D)));
  return s;
}

// Opts the kernel into `bytes` of dynamic shared memory, with a clear error on devices
// that have less per block than the kernel needs.
template <typename Kernel>
void set_smem(Kernel* kernel, size_t bytes, int64_t D) {
  const std::string what = "attention (head dim " + std::to_string(D) + ")";
  vec::allow_dynamic_smem(kernel, bytes, what.c_str());
}

template <typename T, int D>
void launch_forward(T* out, float* lse, const T* qkv, int64_t B, const Shape& s,
                    cudaStream_t stream) {
  const dim3 grid(unsigned(ceil_div(s.T, kTile)), unsigned(s.Hq), unsigned(B));
  set_smem(attention_forward_kernel<T, D>, forward_smem<D>(), s.hd);
  attention_forward_kernel<T, D><<<grid, kThreads, forward_smem<D>(), stream>>>(out, lse, qkv, s);
  KUMIKO_CUDA_LAUNCH_CHECK();
}

template <typename T, int D>
void launch_backward(T* dqkv, const T* dout, const T* qkv, const float* lse, const float* delta,
                     int64_t B, const Shape& s, cudaStream_t stream) {
  const unsigned tiles = unsigned(ceil_div(s.T, kTile));
  set_smem(attention_dkdv_kernel<T, D>, dkdv_smem<D>(), s.hd);
  attention_dkdv_kernel<T, D>
      <<<dim3(tiles, unsigned(s.Hkv), unsigned(B)), kThreads, dkdv_smem<D>(), stream>>>(
          dqkv, dout, qkv, lse, delta, s);
  KUMIKO_CUDA_LAUNCH_CHECK();
  set_smem(attention_dq_kernel<T, D>, dq_smem<D>(), s.hd);
  attention_dq_kernel<T, D>
      <<<dim3(tiles, unsigned(s.Hq), unsigned(B)), kThreads, dq_smem<D>(), stream>>>(
          dqkv, dout, qkv, lse, delta, s);
  KUMIKO_CUDA_LAUNCH_CHECK();
}

template <typename T>
void forward_simt(T* out, float* lse, const T* qkv, int64_t B, const Shape& s,
                  cudaStream_t stream) {
  if (s.hd <= 64)
    launch_forward<T, 64>(out, lse, qkv, B, s, stream);
  else
    launch_forward<T, 128>(out, lse, qkv, B, s, stream);
}

// allow_tc: bf16 may take the tensor-core kernels (after the shared delta pre-pass).
template <typename T>
void backward(bool allow_tc, T* dqkv, const T* dout, const T* qkv, const T* out, const float* lse,
              int64_t B, int64_t T_, int64_t Hq, int64_t Hkv, int64_t D, void* workspace,
              cudaStream_t stream) {
  const Shape s = make_shape(B, T_, Hq, Hkv, D);
  if (B == 0 || T_ == 0) return;
  float* delta = static_cast<float*>(workspace);
  const int64_t rows = B * T_ * Hq;
  constexpr int kWarps = 8;
  attention_delta_kernel<T><<<unsigned(ceil_div(rows, kWarps)), kWarps * 32, 0, stream>>>(
      delta, dout, out, rows, s.T, s.Hq, s.hd);
  KUMIKO_CUDA_LAUNCH_CHECK();
  if constexpr (std::is_same_v<T, bf16>) {
    if (allow_tc && attention_tc_supported(T_, D, {dqkv, dout, qkv})) {
      attention_backward_tc(dqkv, dout, qkv, lse, delta, B, s, stream);
      return;
    }
  }
  if (D <= 64)
    launch_backward<T, 64>(dqkv, dout, qkv, lse, delta, B, s, stream);
  else
    launch_backward<T, 128>(dqkv, dout, qkv, lse, delta, B, s, stream);
}

}  // namespace

template <typename T>
void attention_forward(T* out, float* lse, const T* qkv, int64_t B, int64_t T_, int64_t Hq,
                       int64_t Hkv, int64_t D, cudaStream_t stream) {
  const Shape s = make_shape(B, T_, Hq, Hkv, D);
  if (B == 0 || T_ == 0) return;
  if constexpr (std::is_same_v<T, bf16>) {
    if (attention_tc_supported(T_, D, {out, qkv})) {
      attention_forward_tc(out, lse, qkv, B, s, stream);
      return;
    }
  }
  forward_simt(out, lse, qkv, B, s, stream);
}

template <typename T>
void attention_forward_simt(T* out, float* lse, const T* qkv, int64_t B, int64_t T_, int64_t Hq,
                            int64_t Hkv, int64_t D, cudaStream_t stream) {
  const Shape s = make_shape(B, T_, Hq, Hkv, D);
  if (B == 0 || T_ == 0) return;
  forward_simt(out, lse, qkv, B, s, stream);
}

size_t attention_backward_workspace_bytes(int64_t B, int64_t T_, int64_t Hq, int64_t /*Hkv*/,
                                          int64_t /*D*/) {
  return size_t(B * Hq * T_) * sizeof(float);  // delta [B, Hq, T]
}

template <typename T>
void attention_backward(T* dqkv, const T* dout, const T* qkv, const T* out, const float* lse,
                        int64_t B, int64_t T_, int64_t Hq, int64_t Hkv, int64_t D, void* workspace,
                        cudaStream_t stream) {
  backward(true, dqkv, dout, qkv, out, lse, B, T_, Hq, Hkv, D, workspace, stream);
}

template <typename T>
void attention_backward_simt(T* dqkv, const T* dout, const T* qkv, const T* out, const float* lse,
                             int64_t B, int64_t T_, int64_t Hq, int64_t Hkv, int64_t D,
                             void* workspace, cudaStream_t stream) {
  backward(false, dqkv, dout, qkv, out, lse, B, T_, Hq, Hkv, D, workspace, stream);
}

template void attention_forward<float>(float*, float*, const float*, int64_t, int64_t, int64_t,
                                       int64_t, int64_t, cudaStream_t);
template void attention_forward<bf16>(bf16*, float*, const bf16*, int64_t, int64_t, int64_t,
                                      int64_t, int64_t, cudaStream_t);
template void attention_backward<float>(float*, const float*, const float*, const float*,
                                        const float*, int64_t, int64_t, int64_t, int64_t, int64_t,
                                        void*, cudaStream_t);
template void attention_backward<bf16>(bf16*, const bf16*, const bf16*, const bf16*, const float*,
                                       int64_t, int64_t, int64_t, int64_t, int64_t, void*,
                                       cudaStream_t);
template void attention_forward_simt<float>(float*, float*, const float*, int64_t, int64_t, int64_t,
                                            int64_t, int64_t, cudaStream_t);
template void attention_forward_simt<bf16>(bf16*, float*, const bf16*, int64_t, int64_t, int64_t,
                                           int64_t, int64_t, cudaStream_t);
template void attention_backward_simt<float>(float*, const float*, const float*, const float*,
                                             const float*, int64_t, int64_t, int64_t, int64_t,
                                             int64_t, void*, cudaStream_t);
template void attention_backward_simt<bf16>(bf16*, const bf16*, const bf16*, const bf16*,
                                            const float*, int64_t, int64_t, int64_t, int64_t,
                                            int64_t, void*, cudaStream_t);

}  // namespace kumiko::cuda
