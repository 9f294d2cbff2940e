// Causal grouped-query flash attention on tensor cores, bf16 with head dims 64 and 128
// (FlashAttention-2, Dao 2023): the matrix products run through WMMA (16x16x16 bf16
// fragments, fp32 accumulators), the softmax bookkeeping on CUDA cores in fp32. attention.cu
// dispatches its bf16 launchers here (attention_tc.cuh); the semantics are those of
// attention.cuh and kumiko::cpu::attention_*.
//
// Precision: scores, row statistics, lse and every accumulator are fp32. P and dS, the
// matrix_a operands of the second products (P V, P^T dO, dS^T Q, dS K), enter as two bf16
// halves hi = bf16(x), lo = bf16(x - hi), both multiplied with the same B fragment: hi + lo
// carries x to ~2^-16. With hi alone (what cuDNN and FlashAttention-2 do) the error reaches
// ~2e-2 of the reference scale on dV and ~1e-2 on out and dK, mostly at the first keys,
// where a few probabilities near 1 dominate the sums (a numpy emulation of these kernels
// against the float64 reference, with the tests' metric); with the split it is ~3e-3, the
// rounding of the bf16 outputs. The price: the second products run twice (the forward does
// 3 products per tile instead of 2, the backward 10 instead of 7).
//
// Blocks have 4 warps; a block owns a 64-row tile (queries in the forward and dQ kernels,
// keys in the dK/dV kernel) and warp w its rows 16w..16w+15. Key and query tiles are both
// 64 rows, so the causal diagonal of a query tile is exactly one key tile; masks use
// absolute positions. Rows past T are zero-filled in shared memory (never loaded or stored).
//
// Shared memory: bf16 tiles [64][D + 8] (the 16-byte row padding spreads the 8 rows of a
// fragment load over distinct banks and keeps every 16-row fragment block 32-byte aligned);
// per warp an fp32 tile S [16][72] (scores, dP, epilogue staging) and two bf16 tiles
// [16][72] (hi and lo of P, then of dS; the forward lays them over S). WMMA hides which
// (row, column) a fragment element holds, so per-row work goes through S: the warp stores
// its score fragments there and then lane l owns row l/2, columns 8k + 4(l%2) + e (k < 8,
// e < 4; one conflict-free float4 per k), the row max and sum combining lanes l and l^1.
// Per-row state (max, sum, lse, delta) lives in those lanes' registers.
//
// Forward, block = (q head, batch, query tile; longest tiles first): the Q fragments of the
// warp's 16 rows stay in registers; K and V tiles are double-buffered with 16-byte cp.async
// (the next tile in flight during the products). Per key tile up to the diagonal:
// S = Q K^T -> S tile; online softmax in base 2 (scores times log2(e)/sqrt(D); running max m,
// rescale factor corr = exp2(m_old - m_new), per-lane partial sums l of the fp32 p); P's
// halves over the S tile (the scores are in registers by then); the output accumulator (D/16
// fragments in registers) is rescaled row-wise by multiplying it element-wise with a
// fragment loaded from a 16x16 tile whose row r is filled with corr[r] (fragments of one
// type hold the same (row, column) in the same element: mma_sync adds C element-wise, and
// the CUDA samples' alpha/beta epilogue combines a loaded and a computed fragment the same
// way); then O += P V. At the end out = O / l and lse = (m + log2 l) ln 2.
// Backward (dqkv overwritten, deterministic: every output element is written by one warp
// that sums in a fixed order), after attention.cu's pre-pass delta = rowsum(dO * O):
//   dK/dV, block = (kv head, batch, key tile; kt = 0 first): K and V tiles stay in shared
//     memory; for each q head of the group and each query tile from the diagonal on: Q and
//     dO tiles (cp.async) and the tile's lse * log2(e) and delta; S^T = K_w Q^T ->
//     P^T = exp2(S^T log2(e)/sqrt(D) - lse) (masked) as hi/lo; dV += P^T dO;
//     dP^T = V_w dO^T -> S tile; dS^T = P^T (dP^T - delta), lane-wise from the two tiles
//     (P^T = hi + lo), written over P^T; dK += dS^T Q; dK is scaled by 1/sqrt(D) when stored.
//   dQ, block = (q head, batch, query tile; longest first): the Q and dO fragments stay in
//     registers, the row's lse and delta in the lane's registers; K and V double-buffered;
//     per key tile up to the diagonal: S = Q K^T -> P (hi/lo); dP = dO V^T -> S tile;
//     dS = P (dP - delta) over P; dQ += dS K; scaled by 1/sqrt(D) when stored.
// Outputs leave through the warp's S tile (64 columns at a time): lane l writes 16-byte
// pieces l + 32u (row piece/8, columns 8 (piece%8)..+8), each row a contiguous 128 bytes.
#include "kernels/cuda/attention_tc.cuh"

#include <mma.h>

#include <cmath>
#include <cstdint>
#include <cstring>

#include "kernels/cuda/vector_util.cuh"
#include "kumiko/core/error.h"

namespace kumiko::cuda {

namespace {

namespace wmma = nvcuda::wmma;
using vec::cp_async16;
using vec::cp_async_commit;
using vec::cp_async_wait;

constexpr int kTile = 64;  // query rows per query tile, keys per key tile
constexpr int kWarps = 4;  // warp w owns rows 16w..16w+15 of the block's tile
constexpr int kThreads = 32 * kWarps;
constexpr int kLdS = kTile + 8;  // pitch (floats) of a warp's fp32 tile [16][kLdS]
constexpr int kLdP = kTile + 8;  // pitch (elements) of a warp's bf16 tile [16][kLdP]
constexpr int kSElems = 16 * kLdS;
constexpr int kPElems = 16 * kLdP;
constexpr int kCElems = 16 * 16;  // a warp's row-broadcast tile (forward rescale)
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

template <int D>
constexpr int ld() {  // pitch (elements) of the bf16 tiles [kTile][D + 8]
  return D + 8;
}
template <int D>
constexpr int tile_elems() {
  return kTile * ld<D>();
}

// Dynamic shared memory of each kernel, carved in this order (SmemCursor):
//   forward: K/V stages [2][K, V][kTile][LD] bf16 | S [4][16][kLdS] f32 (P's two bf16 halves
//            [16][kLdP] replace a warp's scores) | C [4][16][16] f32
//   dK/dV:   K, V, Q, dO [kTile][LD] bf16 | S | P/dS [4][hi, lo][16][kLdP] bf16 |
//            lse, delta [kTile] f32
//   dQ:      K/V stages | S | P/dS
// D = 128: 92160, 107008 and 106496 bytes (two blocks per SM on sm_90); D = 64: 59392,
// 74240 and 73728 (three).
template <int D>
constexpr size_t forward_smem() {
  return 4 * tile_elems<D>() * sizeof(bf16) + kWarps * (kSElems + kCElems) * sizeof(float);
}
template <int D>
constexpr size_t dkdv_smem() {
  return 4 * tile_elems<D>() * sizeof(bf16) +
         kWarps * (kSElems * sizeof(float) + 2 * kPElems * sizeof(bf16)) +
         2 * kTile * sizeof(float);
}
template <int D>
constexpr size_t dq_smem() {
  return 4 * tile_elems<D>() * sizeof(bf16) +
         kWarps * (kSElems * sizeof(float) + 2 * kPElems * sizeof(bf16));
}
static_assert(2 * kPElems * sizeof(bf16) <= kSElems * sizeof(float), "P's halves fit in S");
// Blocks per SM the shared memory allows on sm_90 (228 KiB, 1 KiB reserved per block): the
// register budget given to ptxas (__launch_bounds__).
template <int D>
constexpr int kMinBlocks = D == 64 ? 3 : 2;
template <int D>
constexpr bool fits_min_blocks() {
  constexpr size_t kSm = 228 * 1024, kReserved = 1024;
  return kMinBlocks<D> * (forward_smem<D>() + kReserved) <= kSm &&
         kMinBlocks<D> * (dkdv_smem<D>() + kReserved) <= kSm &&
         kMinBlocks<D> * (dq_smem<D>() + kReserved) <= kSm;
}
static_assert(fits_min_blocks<64>() && fits_min_blocks<128>());
// WMMA needs 32-byte aligned fragment pointers: every region size and every 16-row block
// offset is a multiple of 32 bytes, and column offsets are multiples of 16 elements.
static_assert(tile_elems<64>() * sizeof(bf16) % 32 == 0 &&
              tile_elems<128>() * sizeof(bf16) % 32 == 0);
static_assert(16 * ld<64>() * sizeof(bf16) % 32 == 0 && 16 * ld<128>() * sizeof(bf16) % 32 == 0);
static_assert(kSElems * sizeof(float) % 32 == 0 && kPElems * sizeof(bf16) % 32 == 0);
static_assert(kCElems * sizeof(float) % 32 == 0);

// Carves consecutive regions out of the dynamic shared memory: take<U>(n) returns the next
// n elements of type U.
struct SmemCursor {
  unsigned char* p;
  template <typename U>
  __device__ __forceinline__ U* take(int n) {
    U* r = reinterpret_cast<U*>(p);
    p += n * int(sizeof(U));
    return r;
  }
};

using FragA = wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major>;
using FragBRow = wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::row_major>;  // B [k][n]
using FragBCol = wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::col_major>;  // B^T [n][k]
using FragC = wmma::fragment<wmma::accumulator, 16, 16, 16, float>;

using Shape = AttentionShape;  // hd equals the template D here

// Issues the copy of rows [0, kTile) of a head slice (row r at src + r * stride, D
// elements) into dst [kTile][LD]; rows >= n_rows are zero-filled and pass row 0 (a tile
// starts before T) as their never-read address. Thread t copies the 16-byte chunk
// t % (D/8) of rows t / (D/8) + u * kThreads / (D/8): consecutive threads read consecutive
// chunks of a row.
template <int D>
__device__ __forceinline__ void load_tile_async(bf16* dst, const bf16* src, int64_t stride,
                                                int n_rows) {
  constexpr int kPerRow = D / 8, kRowStep = kThreads / kPerRow;
  static_assert(kThreads % kPerRow == 0 && kTile % kRowStep == 0, "whole rows per pass");
  const int r0 = threadIdx.x / kPerRow, col = (threadIdx.x % kPerRow) * 8;
#pragma unroll
  for (int u = 0; u < kTile / kRowStep; ++u) {
    const int r = r0 + u * kRowStep;
    const bool in = r < n_rows;
    cp_async16(dst + r * ld<D>() + col, src + (in ? r : 0) * stride + col, in);
  }
}

template <int N>
__device__ __forceinline__ void zero(FragC (&acc)[N]) {
#pragma unroll
  for (int n = 0; n < N; ++n) wmma::fill_fragment(acc[n], 0.0f);
}

// acc[n][r][c] += sum_d A[r][d] * B[16n + c][d] (n < 4): the warp's 16 rows of A (as
// fragments over the head dim, or at A with pitch LD) against the 64 rows of the tile B.
template <int D>
__device__ __forceinline__ void add_abt(FragC (&acc)[4], const FragA (&a)[D / 16], const bf16* B) {
#pragma unroll
  for (int k = 0; k < D / 16; ++k)
#pragma unroll
    for (int n = 0; n < 4; ++n) {
      FragBCol bt;
      wmma::load_matrix_sync(bt, B + 16 * n * ld<D>() + 16 * k, ld<D>());
      wmma::mma_sync(acc[n], a[k], bt, acc[n]);
    }
}
template <int D>
__device__ __forceinline__ void add_abt(FragC (&acc)[4], const bf16* A, const bf16* B) {
#pragma unroll 1
  for (int k = 0; k < D / 16; ++k) {
    FragA a;
    wmma::load_matrix_sync(a, A + 16 * k, ld<D>());
#pragma unroll
    for (int n = 0; n < 4; ++n) {
      FragBCol bt;
      wmma::load_matrix_sync(bt, B + 16 * n * ld<D>() + 16 * k, ld<D>());
      wmma::mma_sync(acc[n], a, bt, acc[n]);
    }
  }
}

// acc[n] += (Hi + Lo) B[:, 16n..16n+15]: Hi and Lo are the warp's bf16 [16][64] tiles of one
// fp32 matrix split in two, B a [64][D] tile.
template <int D>
__device__ __forceinline__ void add_split_b(FragC (&acc)[D / 16], const bf16* Hi, const bf16* Lo,
                                            const bf16* B) {
#pragma unroll 1
  for (int k = 0; k < kTile / 16; ++k) {
    FragA hi, lo;
    wmma::load_matrix_sync(hi, Hi + 16 * k, kLdP);
    wmma::load_matrix_sync(lo, Lo + 16 * k, kLdP);
#pragma unroll
    for (int n = 0; n < D / 16; ++n) {
      FragBRow bf;
      wmma::load_matrix_sync(bf, B + 16 * k * ld<D>() + 16 * n, ld<D>());
      wmma::mma_sync(acc[n], hi, bf, acc[n]);
      wmma::mma_sync(acc[n], lo, bf, acc[n]);
    }
  }
}

// The warp's [16][64] fp32 tile Sw from the four 16x16 accumulators.
__device__ __forceinline__ void store_tile(float* Sw, const FragC (&acc)[4]) {
#pragma unroll
  for (int n = 0; n < 4; ++n)
    wmma::store_matrix_sync(Sw + 16 * n, acc[n], kLdS, wmma::mem_row_major);
}

// x[k][e] = row[8k + e] (k < 8, e < 4): the lane's 32 values of its row (16-byte aligned).
__device__ __forceinline__ void load_lane_row(float (&x)[8][4], const float* row) {
#pragma unroll
  for (int k = 0; k < 8; ++k) {
    const float4 v = *reinterpret_cast<const float4*>(row + 8 * k);
    x[k][0] = v.x;
    x[k][1] = v.y;
    x[k][2] = v.z;
    x[k][3] = v.w;
  }
}

__device__ __forceinline__ uint32_t pack_bf16x2(float a, float b) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(a, b);  // a at the lower address
  uint32_t u;
  memcpy(&u, &v, sizeof(u));
  return u;
}
__device__ __forceinline__ float2 unpack_bf16x2(uint32_t u) {
  __nv_bfloat162 v;
  memcpy(&v, &u, sizeof(u));
  return __bfloat1622float2(v);
}

// hi[8k + e] = bf16(x[k][e]), lo[8k + e] = bf16(x[k][e] - hi[8k + e]) (k < 8, e < 4; rows
// 8-byte aligned): hi + lo carries x to ~2^-16, where hi alone is off by up to 2^-8.
__device__ __forceinline__ void store_lane_split(bf16* hi, bf16* lo, const float (&x)[8][4]) {
#pragma unroll
  for (int k = 0; k < 8; ++k) {
    float h[4], l[4];
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      h[e] = __bfloat162float(__float2bfloat16_rn(x[k][e]));
      l[e] = x[k][e] - h[e];  // exact in fp32
    }
    *reinterpret_cast<uint2*>(hi + 8 * k) =
        make_uint2(pack_bf16x2(h[0], h[1]), pack_bf16x2(h[2], h[3]));
    *reinterpret_cast<uint2*>(lo + 8 * k) =
        make_uint2(pack_bf16x2(l[0], l[1]), pack_bf16x2(l[2], l[3]));
  }
}
// x[k][e] = hi[8k + e] + lo[8k + e]: the value store_lane_split stored.
__device__ __forceinline__ void load_lane_split(float (&x)[8][4], const bf16* hi, const bf16* lo) {
#pragma unroll
  for (int k = 0; k < 8; ++k) {
    const uint2 h = *reinterpret_cast<const uint2*>(hi + 8 * k);
    const uint2 l = *reinterpret_cast<const uint2*>(lo + 8 * k);
    const float2 h01 = unpack_bf16x2(h.x), h23 = unpack_bf16x2(h.y);
    const float2 l01 = unpack_bf16x2(l.x), l23 = unpack_bf16x2(l.y);
    x[k][0] = h01.x + l01.x;
    x[k][1] = h01.y + l01.y;
    x[k][2] = h23.x + l23.x;
    x[k][3] = h23.y + l23.y;
  }
}

// Writes the warp's 16 x D accumulator rows r < n_rows to dst + r * stride as bf16, row r
// multiplied by `mul` of lane 2r (the lane that owns row r). Staged through the warp's
// fp32 tile Sw, 64 columns at a time; global stores are 16 bytes (dst 16-byte aligned,
// stride a multiple of 8).
template <int D>
__device__ __forceinline__ void store_rows(bf16* dst, int64_t stride, int n_rows,
                                           const FragC (&acc)[D / 16], float* Sw, float mul) {
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int c = 0; c < D / 64; ++c) {
#pragma unroll
    for (int n = 0; n < 4; ++n)
      wmma::store_matrix_sync(Sw + 16 * n, acc[4 * c + n], kLdS, wmma::mem_row_major);
    __syncwarp();
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      const int piece = lane + 32 * u, row = piece / 8, col = (piece % 8) * 8;
      const float f = __shfl_sync(0xffffffffu, mul, 2 * row);
      if (row < n_rows) {
        const float4 a = *reinterpret_cast<const float4*>(Sw + row * kLdS + col);
        const float4 b = *reinterpret_cast<const float4*>(Sw + row * kLdS + col + 4);
        *reinterpret_cast<uint4*>(dst + row * stride + 64 * c + col) =
            make_uint4(pack_bf16x2(a.x * f, a.y * f), pack_bf16x2(a.z * f, a.w * f),
                       pack_bf16x2(b.x * f, b.y * f), pack_bf16x2(b.z * f, b.w * f));
      }
    }
    __syncwarp();  // Sw is rewritten by the next chunk
  }
}

template <int D>
__global__ void __launch_bounds__(kThreads, kMinBlocks<D>)
    attention_forward_tc_kernel(bf16* out, float* lse, const bf16* qkv, Shape s) {
  constexpr int LD = ld<D>(), NF = D / 16, TE = tile_elems<D>();
  extern __shared__ __align__(128) unsigned char smem[];
  SmemCursor cursor{smem};
  bf16* kv = cursor.take<bf16>(4 * TE);  // stage st: K at kv + 2 st TE, V at kv + (2 st + 1) TE
  float* s_all = cursor.take<float>(kWarps * kSElems);
  float* c_all = cursor.take<float>(kWarps * kCElems);

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  float* Sw = s_all + warp * kSElems;       // [16][kLdS] scores of the warp's rows; then P:
  bf16* Phi = reinterpret_cast<bf16*>(Sw);  // [16][kLdP] bf16(P), over the scores' first half
  bf16* Plo = Phi + kPElems;                // [16][kLdP] bf16(P - Phi), over the second half
  float* Cw = c_all + warp * kCElems;       // [16][16] row r = rescale factor of row r

  const int h = blockIdx.x, b = blockIdx.y, qt = gridDim.z - 1 - blockIdx.z;
  const int g = h / s.group, i0 = qt * kTile;
  const bf16* base = qkv + int64_t(b) * s.T * s.W;
  const bf16* kcol = base + int64_t(s.Hq + g) * D;  // key head g, token 0
  const bf16* vcol = base + int64_t(s.Hq + s.Hkv + g) * D;

  // The Q tile goes through stage 1's K slot (free until the first prefetch).
  load_tile_async<D>(kv + 2 * TE, base + int64_t(i0) * s.W + int64_t(h) * D, s.W, s.T - i0);
  load_tile_async<D>(kv, kcol, s.W, s.T);
  load_tile_async<D>(kv + TE, vcol, s.W, s.T);
  cp_async_commit();
  cp_async_wait<0>();
  __syncthreads();
  FragA qf[NF];
#pragma unroll
  for (int k = 0; k < NF; ++k)
    wmma::load_matrix_sync(qf[k], kv + 2 * TE + 16 * warp * LD + 16 * k, LD);
  __syncthreads();  // every warp has its Q fragments before stage 1 is refilled

  FragC of[NF];  // unnormalised output of the warp's 16 rows
  zero(of);
  const int r = lane / 2, half = lane % 2, i = i0 + 16 * warp + r;  // the lane's row
  float m = -INFINITY;  // running max of row r (base-2 units)
  float l = 0.0f;       // this lane's share of the row sum (its 32 columns), rescaled with m

  for (int kt = 0; kt <= qt; ++kt) {
    const int st = kt & 1, j0 = kt * kTile;
    if (kt < qt) {  // stage st^1 was read in step kt-1, released by its closing barrier
      const int64_t next = int64_t(j0 + kTile) * s.W;
      load_tile_async<D>(kv + 2 * (st ^ 1) * TE, kcol + next, s.W, s.T - j0 - kTile);
      load_tile_async<D>(kv + (2 * (st ^ 1) + 1) * TE, vcol + next, s.W, s.T - j0 - kTile);
    }
    cp_async_commit();   // possibly empty: "all groups but the newest" is then tile kt
    cp_async_wait<1>();  // this thread's chunks of tile kt have landed
    __syncthreads();     // ... and everyone else's
    const bf16* Ks = kv + 2 * st * TE;
    const bf16* Vs = Ks + TE;

    {
      FragC sf[4];
      zero(sf);
      add_abt<D>(sf, qf, Ks);  // S: the warp's queries x the tile's 64 keys
      store_tile(Sw, sf);
    }
    __syncwarp();
    {
      float x[8][4];
      load_lane_row(x, Sw + r * kLdS + 4 * half);
      float mx = -INFINITY;
#pragma unroll
      for (int k = 0; k < 8; ++k)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          // Only the diagonal tile has keys after the query.
          x[k][e] = (j0 + 8 * k + 4 * half + e > i) ? -INFINITY : x[k][e] * s.scale_log2;
          mx = fmaxf(mx, x[k][e]);
        }
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      const float m_new = fmaxf(m, mx);     // finite: key j0 <= i is never masked
      const float corr = exp2f(m - m_new);  // 0 on the first tile (m = -inf)
      m = m_new;
      float sum = 0.0f;
#pragma unroll
      for (int k = 0; k < 8; ++k)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          x[k][e] = exp2f(x[k][e] - m_new);
          sum += x[k][e];
        }
      l = l * corr + sum;
      __syncwarp();  // every lane has read its scores before P overwrites them
      store_lane_split(Phi + r * kLdP + 4 * half, Plo + r * kLdP + 4 * half, x);
      const float4 c4 = make_float4(corr, corr, corr, corr);
      *reinterpret_cast<float4*>(Cw + r * 16 + 8 * half) = c4;
      *reinterpret_cast<float4*>(Cw + r * 16 + 8 * half + 4) = c4;
    }
    __syncwarp();
    {
      FragC cf;
      wmma::load_matrix_sync(cf, Cw, 16, wmma::mem_row_major);
#pragma unroll
      for (int n = 0; n < NF; ++n)
#pragma unroll
        for (int t = 0; t < cf.num_elements; ++t) of[n].x[t] *= cf.x[t];
    }
    add_split_b<D>(of, Phi, Plo, Vs);  // O += P V
    __syncthreads();                   // stage st is refilled by the next step
  }
  cp_async_wait<0>();  // only empty groups can remain

  const float total = l + __shfl_xor_sync(0xffffffffu, l, 1);
  if (half == 0 && i < s.T) lse[(int64_t(b) * s.Hq + h) * s.T + i] = (m + log2f(total)) * kLn2;
  const int row0 = i0 + 16 * warp;
  store_rows<D>(out + (int64_t(b) * s.T + row0) * s.OW + int64_t(h) * D, s.OW, s.T - row0, of, Sw,
                1.0f / total);
}

template <int D>
__global__ void __launch_bounds__(kThreads, kMinBlocks<D>)
    attention_dkdv_tc_kernel(bf16* dqkv, const bf16* dout, const bf16* qkv, const float* lse,
                             const float* delta, Shape s) {
  constexpr int LD = ld<D>(), NF = D / 16, TE = tile_elems<D>();
  extern __shared__ __align__(128) unsigned char smem[];
  SmemCursor cursor{smem};
  bf16* Ks = cursor.take<bf16>(TE);   // [kTile][LD] key tile (fixed)
  bf16* Vs = cursor.take<bf16>(TE);   // [kTile][LD] value tile (fixed)
  bf16* Qs = cursor.take<bf16>(TE);   // [kTile][LD] query tile
  bf16* dOs = cursor.take<bf16>(TE);  // [kTile][LD] dout tile
  float* s_all = cursor.take<float>(kWarps * kSElems);
  bf16* p_all = cursor.take<bf16>(kWarps * 2 * kPElems);
  float* lse_s = cursor.take<float>(kTile);    // lse * log2(e) of the query tile's rows
  float* delta_s = cursor.take<float>(kTile);  // delta of the query tile's rows

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  float* Sw = s_all + warp * kSElems;     // [16 keys][kLdS] S^T, then dP^T
  bf16* Hi = p_all + warp * 2 * kPElems;  // [16 keys][kLdP] P^T, then dS^T: bf16 part
  bf16* Lo = Hi + kPElems;                // [16 keys][kLdP] the rest (x - bf16(x))

  const int g = blockIdx.x, b = blockIdx.y, kt = blockIdx.z;  // kt = 0 has the most query tiles
  const int j0 = kt * kTile, n_tiles = gridDim.z;
  const bf16* base = qkv + int64_t(b) * s.T * s.W;
  const bf16* dbase = dout + int64_t(b) * s.T * s.OW;

  load_tile_async<D>(Ks, base + int64_t(j0) * s.W + int64_t(s.Hq + g) * D, s.W, s.T - j0);
  load_tile_async<D>(Vs, base + int64_t(j0) * s.W + int64_t(s.Hq + s.Hkv + g) * D, s.W, s.T - j0);
  cp_async_commit();  // waited for with the first query tile

  FragC dk[NF], dv[NF];  // the warp's 16 key rows
  zero(dk);
  zero(dv);
  const int r = lane / 2, half = lane % 2, j = j0 + 16 * warp + r;  // the lane's key row
  const bf16* Kw = Ks + 16 * warp * LD;
  const bf16* Vw = Vs + 16 * warp * LD;
  float* Srow = Sw + r * kLdS + 4 * half;  // the lane's 32 values: columns 8k + 4 half + e
  bf16* Hrow = Hi + r * kLdP + 4 * half;
  bf16* Lrow = Lo + r * kLdP + 4 * half;

  for (int hh = 0; hh < s.group; ++hh) {
    const int h = g * s.group + hh;
    const float* lse_h = lse + (int64_t(b) * s.Hq + h) * s.T;
    const float* delta_h = delta + (int64_t(b) * s.Hq + h) * s.T;
    for (int qt = kt; qt < n_tiles; ++qt) {
      const int i0 = qt * kTile;
      __syncthreads();  // the previous step is done with Qs, dOs, lse_s and delta_s
      load_tile_async<D>(Qs, base + int64_t(i0) * s.W + int64_t(h) * D, s.W, s.T - i0);
      load_tile_async<D>(dOs, dbase + int64_t(i0) * s.OW + int64_t(h) * D, s.OW, s.T - i0);
      cp_async_commit();
      if (threadIdx.x < kTile) {  // rows past T: 0 (their probabilities are masked to 0)
        const int i = i0 + threadIdx.x;
        lse_s[threadIdx.x] = i < s.T ? lse_h[i] * kLog2e : 0.0f;
        delta_s[threadIdx.x] = i < s.T ? delta_h[i] : 0.0f;
      }
      cp_async_wait<0>();
      __syncthreads();

      {
        FragC sf[4];
        zero(sf);
        add_abt<D>(sf, Kw, Qs);  // S^T: the warp's keys x the tile's 64 queries
        store_tile(Sw, sf);
      }
      __syncwarp();
      {
        float p[8][4];
        load_lane_row(p, Srow);
#pragma unroll
        for (int k = 0; k < 8; ++k) {
          const int c = 8 * k + 4 * half;
          const float4 l4 = *reinterpret_cast<const float4*>(lse_s + c);
          const float lk[4] = {l4.x, l4.y, l4.z, l4.w};
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int i = i0 + c + e;
            // Select, not multiply: exp2 of a masked score may overflow.
            p[k][e] = (i < s.T && j <= i) ? exp2f(fmaf(p[k][e], s.scale_log2, -lk[e])) : 0.0f;
          }
        }
        store_lane_split(Hrow, Lrow, p);  // P^T
      }
      __syncwarp();
      add_split_b<D>(dv, Hi, Lo, dOs);  // dV += P^T dO
      {
        FragC sf[4];
        zero(sf);
        add_abt<D>(sf, Vw, dOs);  // dP^T (Sw: every lane read S^T before the last __syncwarp)
        store_tile(Sw, sf);
      }
      __syncwarp();  // also: every lane's dV loads of P^T are done before dS^T replaces it
      {
        float p[8][4], ds[8][4];
        load_lane_split(p, Hrow, Lrow);
        load_lane_row(ds, Srow);
#pragma unroll
        for (int k = 0; k < 8; ++k) {
          const float4 d4 = *reinterpret_cast<const float4*>(delta_s + 8 * k + 4 * half);
          const float dk4[4] = {d4.x, d4.y, d4.z, d4.w};
#pragma unroll
          for (int e = 0; e < 4; ++e) ds[k][e] = p[k][e] * (ds[k][e] - dk4[e]);
        }
        store_lane_split(Hrow, Lrow, ds);  // dS^T, over the lane's own P^T elements
      }
      __syncwarp();
      add_split_b<D>(dk, Hi, Lo, Qs);  // dK += dS^T Q
    }
  }

  // Sw was last read before the last __syncwarp of the loop.
  const int row0 = j0 + 16 * warp;
  bf16* drow = dqkv + (int64_t(b) * s.T + row0) * s.W;
  store_rows<D>(drow + int64_t(s.Hq + g) * D, s.W, s.T - row0, dk, Sw, s.scale);
  store_rows<D>(drow + int64_t(s.Hq + s.Hkv + g) * D, s.W, s.T - row0, dv, Sw, 1.0f);
}

template <int D>
__global__ void __launch_bounds__(kThreads, kMinBlocks<D>)
    attention_dq_tc_kernel(bf16* dqkv, const bf16* dout, const bf16* qkv, const float* lse,
                           const float* delta, Shape s) {
  constexpr int LD = ld<D>(), NF = D / 16, TE = tile_elems<D>();
  extern __shared__ __align__(128) unsigned char smem[];
  SmemCursor cursor{smem};
  bf16* kv = cursor.take<bf16>(4 * TE);  // stage st: K at kv + 2 st TE, V at kv + (2 st + 1) TE
  float* s_all = cursor.take<float>(kWarps * kSElems);
  bf16* p_all = cursor.take<bf16>(kWarps * 2 * kPElems);

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  float* Sw = s_all + warp * kSElems;     // [16 queries][kLdS] S, then dP
  bf16* Hi = p_all + warp * 2 * kPElems;  // [16 queries][kLdP] P, then dS: bf16 part
  bf16* Lo = Hi + kPElems;                // [16 queries][kLdP] the rest (x - bf16(x))

  const int h = blockIdx.x, b = blockIdx.y, qt = gridDim.z - 1 - blockIdx.z;
  const int g = h / s.group, i0 = qt * kTile;
  const bf16* base = qkv + int64_t(b) * s.T * s.W;
  const bf16* kcol = base + int64_t(s.Hq + g) * D;
  const bf16* vcol = base + int64_t(s.Hq + s.Hkv + g) * D;

  // The Q and dO tiles go through stage 1 (free until the first prefetch).
  load_tile_async<D>(kv + 2 * TE, base + int64_t(i0) * s.W + int64_t(h) * D, s.W, s.T - i0);
  load_tile_async<D>(kv + 3 * TE, dout + (int64_t(b) * s.T + i0) * s.OW + int64_t(h) * D, s.OW,
                     s.T - i0);
  load_tile_async<D>(kv, kcol, s.W, s.T);
  load_tile_async<D>(kv + TE, vcol, s.W, s.T);
  cp_async_commit();

  const int r = lane / 2, half = lane % 2, i = i0 + 16 * warp + r;  // the lane's query row
  const int64_t stat = (int64_t(b) * s.Hq + h) * s.T + i;
  const float lse_r = i < s.T ? lse[stat] * kLog2e : 0.0f;  // rows past T: p is masked to 0
  const float delta_r = i < s.T ? delta[stat] : 0.0f;
  float* Srow = Sw + r * kLdS + 4 * half;  // the lane's 32 values: columns 8k + 4 half + e
  bf16* Hrow = Hi + r * kLdP + 4 * half;
  bf16* Lrow = Lo + r * kLdP + 4 * half;

  cp_async_wait<0>();
  __syncthreads();
  FragA qf[NF], dof[NF];
#pragma unroll
  for (int k = 0; k < NF; ++k) {
    wmma::load_matrix_sync(qf[k], kv + 2 * TE + 16 * warp * LD + 16 * k, LD);
    wmma::load_matrix_sync(dof[k], kv + 3 * TE + 16 * warp * LD + 16 * k, LD);
  }
  __syncthreads();  // every warp has its fragments before stage 1 is refilled

  FragC dq[NF];
  zero(dq);

  for (int kt = 0; kt <= qt; ++kt) {
    const int st = kt & 1, j0 = kt * kTile;
    if (kt < qt) {  // stage st^1 was read in step kt-1, released by its closing barrier
      const int64_t next = int64_t(j0 + kTile) * s.W;
      load_tile_async<D>(kv + 2 * (st ^ 1) * TE, kcol + next, s.W, s.T - j0 - kTile);
      load_tile_async<D>(kv + (2 * (st ^ 1) + 1) * TE, vcol + next, s.W, s.T - j0 - kTile);
    }
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    const bf16* Ks = kv + 2 * st * TE;
    const bf16* Vs = Ks + TE;

    {
      FragC sf[4];
      zero(sf);
      add_abt<D>(sf, qf, Ks);  // S: the warp's queries x the tile's 64 keys
      store_tile(Sw, sf);
    }
    __syncwarp();
    {
      float p[8][4];
      load_lane_row(p, Srow);
#pragma unroll
      for (int k = 0; k < 8; ++k)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int jj = j0 + 8 * k + 4 * half + e;
          p[k][e] = (i < s.T && jj <= i) ? exp2f(fmaf(p[k][e], s.scale_log2, -lse_r)) : 0.0f;
        }
      store_lane_split(Hrow, Lrow, p);  // P
    }
    __syncwarp();  // every lane has read S before dP overwrites it
    {
      FragC sf[4];
      zero(sf);
      add_abt<D>(sf, dof, Vs);  // dP
      store_tile(Sw, sf);
    }
    __syncwarp();
    {
      float p[8][4], ds[8][4];
      load_lane_split(p, Hrow, Lrow);
      load_lane_row(ds, Srow);
#pragma unroll
      for (int k = 0; k < 8; ++k)
#pragma unroll
        for (int e = 0; e < 4; ++e) ds[k][e] = p[k][e] * (ds[k][e] - delta_r);
      store_lane_split(Hrow, Lrow, ds);  // dS, over the lane's own P elements
    }
    __syncwarp();
    add_split_b<D>(dq, Hi, Lo, Ks);  // dQ += dS K
    __syncthreads();                 // stage st is refilled by the next step
  }
  cp_async_wait<0>();

  const int row0 = i0 + 16 * warp;
  store_rows<D>(dqkv + (int64_t(b) * s.T + row0) * s.W + int64_t(h) * D, s.W, s.T - row0, dq, Sw,
                s.scale);
}

template <typename Kernel>
void set_smem(Kernel* kernel, size_t bytes) {
  vec::allow_dynamic_smem(kernel, bytes, "attention (tensor cores)");
}

template <int D>
void launch_forward(bf16* out, float* lse, const bf16* qkv, int64_t B, const Shape& s,
                    cudaStream_t stream) {
  const dim3 grid(unsigned(s.Hq), unsigned(B), unsigned(ceil_div(s.T, kTile)));
  set_smem(attention_forward_tc_kernel<D>, forward_smem<D>());
  attention_forward_tc_kernel<D><<<grid, kThreads, forward_smem<D>(), stream>>>(out, lse, qkv, s);
  KUMIKO_CUDA_LAUNCH_CHECK();
}

template <int D>
void launch_backward(bf16* dqkv, const bf16* dout, const bf16* qkv, const float* lse,
                     const float* delta, int64_t B, const Shape& s, cudaStream_t stream) {
  const unsigned tiles = unsigned(ceil_div(s.T, kTile));
  set_smem(attention_dkdv_tc_kernel<D>, dkdv_smem<D>());
  attention_dkdv_tc_kernel<D>
      <<<dim3(unsigned(s.Hkv), unsigned(B), tiles), kThreads, dkdv_smem<D>(), stream>>>(
          dqkv, dout, qkv, lse, delta, s);
  KUMIKO_CUDA_LAUNCH_CHECK();
  set_smem(attention_dq_tc_kernel<D>, dq_smem<D>());
  attention_dq_tc_kernel<D>
      <<<dim3(unsigned(s.Hq), unsigned(B), tiles), kThreads, dq_smem<D>(), stream>>>(
          dqkv, dout, qkv, lse, delta, s);
  KUMIKO_CUDA_LAUNCH_CHECK();
}

}  // namespace

bool attention_tc_supported(int64_t T_, int64_t D, std::initializer_list<const void*> pointers) {
  if (D != 64 && D != 128) return false;
  if (ceil_div(T_, kTile) > 65535) return false;  // grid z
  return vec::aligned16(pointers);
}

void attention_forward_tc(bf16* out, float* lse, const bf16* qkv, int64_t B, const AttentionShape& s,
                          cudaStream_t stream) {
  KUMIKO_CHECK(s.hd == 64 || s.hd == 128, "attention (tensor cores): head dim ", s.hd, " is not 64 or 128");
  if (B == 0 || s.T == 0) return;
  if (s.hd == 64)
    launch_forward<64>(out, lse, qkv, B, s, stream);
  else
    launch_forward<128>(out, lse, qkv, B, s, stream);
}

void attention_backward_tc(bf16* dqkv, const bf16* dout, const bf16* qkv, const float* lse,
                           const float* delta, int64_t B, const AttentionShape& s, cudaStream_t stream) {
  KUMIKO_CHECK(s.hd == 64 || s.hd == 128, "attention (tensor cores): head dim ", s.hd, " is not 64 or 128");
  if (B == 0 || s.T == 0) return;
  if (s.hd == 64)
    launch_backward<64>(dqkv, dout, qkv, lse, delta, B, s, stream);
  else
    launch_backward<128>(dqkv, dout, qkv, lse, delta, B, s, stream);
}

}  // namespace kumiko::cuda
