// kumiko's GEMM (contract: gemm.cuh): C[M, N] = op(A) op(B) (+ C) (+ bias) (GELU), row-major.
//
// Both kernels see an operand through its storage: "RK" = stored [rows, K] (A in NN/NT,
// B in NT), "KR" = stored [K, rows] (A in TN, B in NN/TN), rows being M for A and N for B.
// The layout only decides how a tile is loaded; the multiply itself is layout-free.
//
// <float, float>: CUDA-core SIMT kernel with exact fp32 FMAs (no TF32). Block tile
//   128x128x8, 256 threads; thread (ty, tx) = (t/16, t%16) owns an 8x8 register micro-tile
//   made of four 4x4 quads at rows {ty*4, 64+ty*4} and cols {tx*4, 64+tx*4}, so that every
//   shared-memory read is a conflict-free float4. Both tiles are kept k-major in shared
//   memory (As[k][m], Bs[k][n], rows padded by 4 floats so that the transposing stores of
//   an RK operand hit 32 distinct banks). The next k-tile is prefetched into registers
//   while the current one is multiplied (two shared buffers, one barrier per k-step).
//   Global loads are float4 when the leading dimensions are multiples of 4 and the
//   pointers 16-byte aligned, element-wise with bounds checks otherwise.
//
// <bf16, bf16>, <bf16, float>: the mma.sync + ldmatrix kernel of gemm_mma.cu whenever
//   gemm_mma_supported holds (leading dimensions of A and B multiples of 8, every pointer
//   16-byte aligned); otherwise, and through gemm_wmma for the tests, the kernel here:
//   tensor cores through WMMA (16x16x16 bf16 fragments, fp32 accumulation). Block tile
//   128x128x32, 8 warps in a 2 (m) x 4 (n) grid, each warp a 64x32 tile = 4x2 accumulator
//   fragments. Shared tiles keep each operand's stored orientation and the fragment layout
//   absorbs the transpose: A RK is matrix_a row_major, A KR col_major, B KR matrix_b
//   row_major, B RK col_major. Rows are padded by 8 bf16 (16 bytes) so that the 16-byte
//   fragment row loads of 8 consecutive rows fall in distinct banks. Fast path (leading
//   dimensions multiples of 8, 16-byte aligned A and B; from gemm only when C, bias or pre
//   is not 16-byte aligned): 16-byte cp.async into two stages, the next tile in flight
//   while the current one is multiplied; a chunk is either wholly inside the matrix or
//   zero-filled, so any M, N, K works. Slow path (any other shape): element-wise
//   bounds-checked loads prefetched through registers into the same two stages.
//   Epilogue: each warp stores one accumulator fragment at a time into its own fp32 patch
//   of the (then idle) pipeline memory; each lane then finishes 8 consecutive columns of
//   one row: (+C) (+bias) (pre, GELU), bounds-checked, converted to Tout.
//
// GELU is the tanh approximation 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), as
// kumiko::cpu::gelu_forward; with bias_gelu, `pre` receives acc + bias in Tout and C the
// GELU of the fp32 value.
#include "kernels/cuda/gelu.cuh"
#include "kernels/cuda/gemm.cuh"

#include <mma.h>

#include <climits>
#include <type_traits>

#include "kernels/cuda/gemm_mma.cuh"
#include "kernels/cuda/vector_util.cuh"
#include "kumiko/core/error.h"

namespace kumiko::cuda {

namespace {

constexpr int kThreads = 256;

enum class Storage { RK, KR };

constexpr Storage a_storage(Layout l) { return l == Layout::TN ? Storage::KR : Storage::RK; }
constexpr Storage b_storage(Layout l) { return l == Layout::NT ? Storage::RK : Storage::KR; }

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }


// ---------------------------------------------------------------------------------------
// Epilogue shared by both kernels: W consecutive outputs of one row.

template <typename Tin, typename Tout>
struct EpilogueParams {
  Tout* C;
  Tout* pre;        // nullable
  const Tin* bias;  // non-null unless epi == none
  int M, N;
  bool accumulate;
  Epilogue epi;
  bool vec;  // N % W == 0 and C, pre, bias 16-byte aligned: W-wide vector accesses
};

// W elements moved as 16-byte accesses (W * sizeof(T) is 16 or 32).
template <typename T, int W>
struct alignas(16) Pack {
  T v[W];
};

template <int W, typename T>
__device__ __forceinline__ void load_w(float (&dst)[W], const T* src) {
  static_assert(W * sizeof(T) % 16 == 0, "vector access must be whole 16-byte words");
  const Pack<T, W> p = *reinterpret_cast<const Pack<T, W>*>(src);
#pragma unroll
  for (int i = 0; i < W; ++i) dst[i] = to_f(p.v[i]);
}

template <int W, typename T>
__device__ __forceinline__ void store_w(T* dst, const float (&src)[W]) {
  static_assert(W * sizeof(T) % 16 == 0, "vector access must be whole 16-byte words");
  Pack<T, W> p;
#pragma unroll
  for (int i = 0; i < W; ++i) p.v[i] = from_f<T>(src[i]);
  *reinterpret_cast<Pack<T, W>*>(dst) = p;
}

// v holds the accumulators of C[m, n .. n+W); the caller guarantees m < M and n < N.
template <int W, typename Tin, typename Tout>
__device__ __forceinline__ void finish(float (&v)[W], const EpilogueParams<Tin, Tout>& p, int m,
                                       int n) {
  const int64_t off = int64_t{m} * p.N + n;
  if (p.vec) {  // n % W == 0 and N % W == 0, so all W columns are inside
    if (p.accumulate) {
      float c[W];
      load_w<W>(c, p.C + off);
#pragma unroll
      for (int j = 0; j < W; ++j) v[j] += c[j];
    }
    if (p.epi != Epilogue::none) {
      float b[W];
      load_w<W>(b, p.bias + n);
#pragma unroll
      for (int j = 0; j < W; ++j) v[j] += b[j];
    }
    if (p.epi == Epilogue::bias_gelu) {
      if (p.pre) store_w<W>(p.pre + off, v);
#pragma unroll
      for (int j = 0; j < W; ++j) v[j] = gelu_tanh(v[j]);
    }
    store_w<W>(p.C + off, v);
  } else {
#pragma unroll
    for (int j = 0; j < W; ++j) {
      if (n + j >= p.N) break;
      float x = v[j];
      if (p.accumulate) x += to_f(p.C[off + j]);
      if (p.epi != Epilogue::none) x += to_f(p.bias[n + j]);
      if (p.epi == Epilogue::bias_gelu) {
        if (p.pre) p.pre[off + j] = from_f<Tout>(x);
        x = gelu_tanh(x);
      }
      p.C[off + j] = from_f<Tout>(x);
    }
  }
}

// ---------------------------------------------------------------------------------------
// fp32 SIMT kernel.

namespace f32 {

constexpr int BM = 128, BN = 128, BK = 8;
constexpr int LDS = BM + 4;  // shared row (one k) of a tile, padded
static_assert(BM == BN, "both operand tiles share one shared-memory shape");

// One thread's share of a k-tile: four consecutive elements along K (RK: row t/2,
// k (t%2)*4) or along rows (KR: k t/32, rows (t%32)*4). Out-of-range elements are 0.
// kVec: ld % 4 == 0 and X 16-byte aligned, so a quad is wholly inside or outside.
template <Storage S, bool kVec>
__device__ __forceinline__ void load(float (&r)[4], const float* __restrict__ X, int64_t ld, int rows,
                                     int K, int r0, int k0) {
  const int t = threadIdx.x;
  const int row = S == Storage::RK ? r0 + t / 2 : r0 + (t % 32) * 4;
  const int k = S == Storage::RK ? k0 + (t % 2) * 4 : k0 + t / 32;
  const int64_t off = S == Storage::RK ? row * ld + k : k * ld + row;
  if constexpr (kVec) {
    if (row < rows && k < K) {
      const float4 q = *reinterpret_cast<const float4*>(X + off);
      r[0] = q.x, r[1] = q.y, r[2] = q.z, r[3] = q.w;
    } else {
      r[0] = r[1] = r[2] = r[3] = 0.0f;
    }
  } else {
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const bool in = S == Storage::RK ? (row < rows && k + j < K) : (k < K && row + j < rows);
      r[j] = in ? X[off + j] : 0.0f;
    }
  }
}

// Stores the quad into the k-major shared tile s[k * LDS + row].
template <Storage S>
__device__ __forceinline__ void store(float* s, const float (&r)[4]) {
  const int t = threadIdx.x;
  if constexpr (S == Storage::RK) {
    const int row = t / 2, k = (t % 2) * 4;
#pragma unroll
    for (int j = 0; j < 4; ++j) s[(k + j) * LDS + row] = r[j];
  } else {
    *reinterpret_cast<float4*>(s + (t / 32) * LDS + (t % 32) * 4) = make_float4(r[0], r[1], r[2], r[3]);
  }
}

template <Storage SA, Storage SB, bool kVec>
__global__ void __launch_bounds__(kThreads)
    gemm_kernel(const float* __restrict__ A, const float* __restrict__ B, EpilogueParams<float, float> p,
                int K) {
  __shared__ __align__(16) float As[2][BK * LDS];
  __shared__ __align__(16) float Bs[2][BK * LDS];
  const int M = p.M, N = p.N;
  const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
  const int64_t lda = SA == Storage::RK ? K : M;
  const int64_t ldb = SB == Storage::RK ? K : N;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;

  float acc[8][8];
#pragma unroll
  for (int i = 0; i < 8; ++i)
#pragma unroll
    for (int j = 0; j < 8; ++j) acc[i][j] = 0.0f;

  float ra[4], rb[4];
  const int nk = (K + BK - 1) / BK;
  if (nk > 0) {
    load<SA, kVec>(ra, A, lda, M, K, m0, 0);
    load<SB, kVec>(rb, B, ldb, N, K, n0, 0);
    store<SA>(As[0], ra);
    store<SB>(Bs[0], rb);
  }
  __syncthreads();
  for (int kt = 0; kt < nk; ++kt) {
    const int cur = kt & 1;
    const bool next = kt + 1 < nk;
    if (next) {  // in flight while this tile is multiplied
      load<SA, kVec>(ra, A, lda, M, K, m0, (kt + 1) * BK);
      load<SB, kVec>(rb, B, ldb, N, K, n0, (kt + 1) * BK);
    }
#pragma unroll
    for (int k = 0; k < BK; ++k) {
      const float* as = As[cur] + k * LDS;
      const float* bs = Bs[cur] + k * LDS;
      const float4 a0 = *reinterpret_cast<const float4*>(as + ty * 4);
      const float4 a1 = *reinterpret_cast<const float4*>(as + 64 + ty * 4);
      const float4 b0 = *reinterpret_cast<const float4*>(bs + tx * 4);
      const float4 b1 = *reinterpret_cast<const float4*>(bs + 64 + tx * 4);
      const float a[8] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
      const float b[8] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
#pragma unroll
      for (int i = 0; i < 8; ++i)
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
    }
    // The other buffer was last read in step kt-1, which every thread finished before
    // the barrier that ended it.
    if (next) {
      store<SA>(As[cur ^ 1], ra);
      store<SB>(Bs[cur ^ 1], rb);
    }
    __syncthreads();
  }

#pragma unroll
  for (int i = 0; i < 8; ++i) {
    const int m = m0 + (i < 4 ? ty * 4 + i : 64 + ty * 4 + i - 4);
    if (m >= M) continue;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int n = n0 + h * 64 + tx * 4;
      if (n >= N) continue;
      float v[4] = {acc[i][h * 4], acc[i][h * 4 + 1], acc[i][h * 4 + 2], acc[i][h * 4 + 3]};
      finish<4>(v, p, m, n);
    }
  }
}

}  // namespace f32

// ---------------------------------------------------------------------------------------
// bf16 tensor-core kernel.

namespace tc {

namespace wmma = nvcuda::wmma;
using vec::cp_async16;
using vec::cp_async_commit;
using vec::cp_async_wait;

constexpr int BM = 128, BN = 128, BK = 32, PAD = 8;
constexpr int kWarpsM = 2, kWarpsN = 4;
constexpr int WM = BM / kWarpsM, WN = BN / kWarpsN;  // 64 x 32 per warp
constexpr int FM = WM / 16, FN = WN / 16;            // 4 x 2 fragments
static_assert(BM == BN, "both operand tiles share one shared-memory shape");
static_assert(kWarpsM * kWarpsN * 32 == kThreads, "one warp per warp tile");

// Shared tile of an operand: RK rows x (BK + PAD), KR BK x (rows + PAD), bf16.
template <Storage S>
constexpr int kLd = S == Storage::RK ? BK + PAD : BM + PAD;
template <Storage S>
constexpr int kTileElems = S == Storage::RK ? BM * (BK + PAD) : BK * (BM + PAD);

constexpr int kEpiLd = 16 + 4;  // fp32 patch of one fragment, padded
template <Storage SA, Storage SB>
constexpr int kSmemBytes = 2 * (kTileElems<SA> + kTileElems<SB>) * 2;
static_assert(kWarpsM * kWarpsN * 16 * kEpiLd * 4 <= kSmemBytes<Storage::KR, Storage::KR>,
              "epilogue patches fit in the pipeline memory");
// Every fragment pointer must be 32-byte aligned: stage sizes and fragment offsets are.
static_assert(kTileElems<Storage::RK> * 2 % 32 == 0 && kTileElems<Storage::KR> * 2 % 32 == 0, "");
static_assert(16 * kEpiLd * 4 % 32 == 0, "");


// Fast path: the k-tile of one operand as 512 16-byte chunks, two per thread. RK: chunk c
// is row c/4, k (c%4)*8; KR: k c/16, rows (c%16)*8. Requires ld % 8 == 0 and a 16-byte
// aligned X, so that a chunk lies wholly inside the matrix or wholly outside (then zeros;
// X itself is passed as the never-read source address).
template <Storage S>
__device__ __forceinline__ void issue_tile(bf16* s, const bf16* X, int64_t ld, int rows, int K, int r0,
                                           int k0) {
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int c = threadIdx.x + kThreads * i;
    if constexpr (S == Storage::RK) {
      const int row = c / 4, k = (c % 4) * 8;
      const bool in = r0 + row < rows && k0 + k < K;
      cp_async16(s + row * kLd<S> + k, in ? X + (r0 + row) * ld + (k0 + k) : X, in);
    } else {
      const int k = c / 16, col = (c % 16) * 8;
      const bool in = k0 + k < K && r0 + col < rows;
      cp_async16(s + k * kLd<S> + col, in ? X + (k0 + k) * ld + (r0 + col) : X, in);
    }
  }
}

// Slow path: 16 elements per thread and operand, consecutive threads on consecutive
// elements of a stored row (coalesced). RK: rows t/32 + 8i, k t%32; KR: k t/128 + 2i,
// rows t%128.
constexpr int kSlowElems = BM * BK / kThreads;

template <Storage S>
__device__ __forceinline__ void load_slow(bf16 (&r)[kSlowElems], const bf16* __restrict__ X, int64_t ld,
                                          int rows, int K, int r0, int k0) {
  const int t = threadIdx.x;
#pragma unroll
  for (int i = 0; i < kSlowElems; ++i) {
    if constexpr (S == Storage::RK) {
      const int row = r0 + t / 32 + 8 * i, k = k0 + t % 32;
      r[i] = row < rows && k < K ? X[row * ld + k] : __float2bfloat16_rn(0.0f);
    } else {
      const int k = k0 + t / 128 + 2 * i, row = r0 + t % 128;
      r[i] = row < rows && k < K ? X[k * ld + row] : __float2bfloat16_rn(0.0f);
    }
  }
}

template <Storage S>
__device__ __forceinline__ void store_slow(bf16* s, const bf16 (&r)[kSlowElems]) {
  const int t = threadIdx.x;
#pragma unroll
  for (int i = 0; i < kSlowElems; ++i) {
    if constexpr (S == Storage::RK) {
      s[(t / 32 + 8 * i) * kLd<S> + t % 32] = r[i];
    } else {
      s[(t / 128 + 2 * i) * kLd<S> + t % 128] = r[i];
    }
  }
}

// Two blocks per SM on the fast path (<= 128 registers); the slow path keeps its
// prefetch registers instead.
template <Storage SA, Storage SB, bool kAsync, typename Tout>
__global__ void __launch_bounds__(kThreads, kAsync ? 2 : 1)
    gemm_kernel(const bf16* __restrict__ A, const bf16* __restrict__ B, EpilogueParams<bf16, Tout> p, int K) {
  using LayoutA = std::conditional_t<SA == Storage::RK, wmma::row_major, wmma::col_major>;
  using LayoutB = std::conditional_t<SB == Storage::KR, wmma::row_major, wmma::col_major>;
  constexpr int kA = kTileElems<SA>, kB = kTileElems<SB>;
  constexpr int ldA = kLd<SA>, ldB = kLd<SB>;
  __shared__ __align__(128) unsigned char smem[kSmemBytes<SA, SB>];
  bf16* const As = reinterpret_cast<bf16*>(smem);  // [2][kA]
  bf16* const Bs = As + 2 * kA;                    // [2][kB]

  const int M = p.M, N = p.N;
  const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
  const int64_t lda = SA == Storage::RK ? K : M;
  const int64_t ldb = SB == Storage::RK ? K : N;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int wm = warp / kWarpsN, wn = warp % kWarpsN;

  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[FM][FN];
#pragma unroll
  for (int i = 0; i < FM; ++i)
#pragma unroll
    for (int j = 0; j < FN; ++j) wmma::fill_fragment(acc[i][j], 0.0f);

  auto multiply = [&](const bf16* as, const bf16* bs) {
#pragma unroll
    for (int kk = 0; kk < BK; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, LayoutA> a[FM];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, LayoutB> b[FN];
#pragma unroll
      for (int i = 0; i < FM; ++i) {
        const int m = wm * WM + i * 16;  // op(A)[m][k] is as[m * ldA + k] (RK) or as[k * ldA + m] (KR)
        wmma::load_matrix_sync(a[i], SA == Storage::RK ? as + m * ldA + kk : as + kk * ldA + m, ldA);
      }
#pragma unroll
      for (int j = 0; j < FN; ++j) {
        const int n = wn * WN + j * 16;  // op(B)[k][n] is bs[k * ldB + n] (KR) or bs[n * ldB + k] (RK)
        wmma::load_matrix_sync(b[j], SB == Storage::KR ? bs + kk * ldB + n : bs + n * ldB + kk, ldB);
      }
#pragma unroll
      for (int i = 0; i < FM; ++i)
#pragma unroll
        for (int j = 0; j < FN; ++j) wmma::mma_sync(acc[i][j], a[i], b[j], acc[i][j]);
    }
  };

  const int nk = (K + BK - 1) / BK;
  if constexpr (kAsync) {
    if (nk > 0) {
      issue_tile<SA>(As, A, lda, M, K, m0, 0);
      issue_tile<SB>(Bs, B, ldb, N, K, n0, 0);
    }
    cp_async_commit();
    for (int kt = 0; kt < nk; ++kt) {
      const int cur = kt & 1;
      if (kt + 1 < nk) {  // the stage read in step kt-1, released by its closing barrier
        issue_tile<SA>(As + (cur ^ 1) * kA, A, lda, M, K, m0, (kt + 1) * BK);
        issue_tile<SB>(Bs + (cur ^ 1) * kB, B, ldb, N, K, n0, (kt + 1) * BK);
      }
      cp_async_commit();   // possibly empty: keeps "all groups but the newest" = tile kt
      cp_async_wait<1>();  // this thread's chunks of tile kt have landed
      __syncthreads();     // ... and everyone else's
      multiply(As + cur * kA, Bs + cur * kB);
      __syncthreads();  // stage cur is refilled by the next step
    }
    cp_async_wait<0>();  // only empty groups can remain; keeps the invariant obvious
  } else {
    bf16 ra[kSlowElems], rb[kSlowElems];
    if (nk > 0) {
      load_slow<SA>(ra, A, lda, M, K, m0, 0);
      load_slow<SB>(rb, B, ldb, N, K, n0, 0);
      store_slow<SA>(As, ra);
      store_slow<SB>(Bs, rb);
    }
    __syncthreads();
    for (int kt = 0; kt < nk; ++kt) {
      const int cur = kt & 1;
      const bool next = kt + 1 < nk;
      if (next) {
        load_slow<SA>(ra, A, lda, M, K, m0, (kt + 1) * BK);
        load_slow<SB>(rb, B, ldb, N, K, n0, (kt + 1) * BK);
      }
      multiply(As + cur * kA, Bs + cur * kB);
      if (next) {  // the other stage was released by the barrier closing step kt-1
        store_slow<SA>(As + (cur ^ 1) * kA, ra);
        store_slow<SB>(Bs + (cur ^ 1) * kB, rb);
      }
      __syncthreads();
    }
  }

  // Every warp has passed the last barrier after its last read of the pipeline memory,
  // so the per-warp fp32 patches may overwrite it.
  float* patch = reinterpret_cast<float*>(smem) + warp * 16 * kEpiLd;
  const int r = lane / 2, c = (lane % 2) * 8;
#pragma unroll
  for (int i = 0; i < FM; ++i) {
#pragma unroll
    for (int j = 0; j < FN; ++j) {
      wmma::store_matrix_sync(patch, acc[i][j], kEpiLd, wmma::mem_row_major);
      __syncwarp();
      const int m = m0 + wm * WM + i * 16 + r, n = n0 + wn * WN + j * 16 + c;
      if (m < M && n < N) {
        const float4 v0 = *reinterpret_cast<const float4*>(patch + r * kEpiLd + c);
        const float4 v1 = *reinterpret_cast<const float4*>(patch + r * kEpiLd + c + 4);
        float v[8] = {v0.x, v0.y, v0.z, v0.w, v1.x, v1.y, v1.z, v1.w};
        finish<8>(v, p, m, n);
      }
      __syncwarp();  // the patch is rewritten by the next fragment
    }
  }
}

}  // namespace tc

// ---------------------------------------------------------------------------------------
// Host side.

template <typename Tin, typename Tout>
EpilogueParams<Tin, Tout> make_params(const GemmArgs& args, Tout* C, const Tin* bias, Tout* pre, int width) {
  EpilogueParams<Tin, Tout> p{C, pre, bias, static_cast<int>(args.M), static_cast<int>(args.N),
                              args.accumulate, args.epilogue, false};
  p.vec = args.N % width == 0 && aligned16(C) && (!pre || aligned16(pre)) && (!bias || aligned16(bias));
  return p;
}

template <Storage SA, Storage SB, typename Tin, typename Tout>
void launch(const GemmArgs& args, const Tin* A, const Tin* B, const EpilogueParams<Tin, Tout>& p,
            cudaStream_t stream) {
  const int64_t lda = SA == Storage::RK ? args.K : args.M;
  const int64_t ldb = SB == Storage::RK ? args.K : args.N;
  const int K = static_cast<int>(args.K);
  if constexpr (std::is_same_v<Tin, float>) {
    const dim3 grid(static_cast<unsigned>(ceil_div(args.N, f32::BN)), static_cast<unsigned>(ceil_div(args.M, f32::BM)));
    if (lda % 4 == 0 && ldb % 4 == 0 && aligned16(A) && aligned16(B))
      f32::gemm_kernel<SA, SB, true><<<grid, kThreads, 0, stream>>>(A, B, p, K);
    else
      f32::gemm_kernel<SA, SB, false><<<grid, kThreads, 0, stream>>>(A, B, p, K);
  } else {
    const dim3 grid(static_cast<unsigned>(ceil_div(args.N, tc::BN)), static_cast<unsigned>(ceil_div(args.M, tc::BM)));
    if (lda % 8 == 0 && ldb % 8 == 0 && aligned16(A) && aligned16(B))
      tc::gemm_kernel<SA, SB, true, Tout><<<grid, kThreads, 0, stream>>>(A, B, p, K);
    else
      tc::gemm_kernel<SA, SB, false, Tout><<<grid, kThreads, 0, stream>>>(A, B, p, K);
  }
  KUMIKO_CUDA_LAUNCH_CHECK();
}

template <typename Tin>
void check_args(const GemmArgs& args, const Tin* bias) {
  // Tile indices and in-tile coordinates are int; offsets are int64.
  constexpr int64_t kMaxDim = INT_MAX - 256;
  KUMIKO_CHECK(args.M >= 0 && args.N >= 0 && args.K >= 0 && args.M <= kMaxDim && args.N <= kMaxDim &&
                   args.K <= kMaxDim,
               "gemm: bad shape M=", args.M, " N=", args.N, " K=", args.K);
  KUMIKO_CHECK(ceil_div(args.M, 128) <= 65535, "gemm: M=", args.M, " exceeds the grid's y range");
  KUMIKO_CHECK(args.epilogue == Epilogue::none || bias != nullptr, "gemm: the epilogue needs a bias");
  KUMIKO_CHECK(!(args.accumulate && args.epilogue == Epilogue::bias_gelu),
               "gemm: accumulate is only defined with Epilogue::none or bias");
}

// The SIMT kernel (float) or the WMMA kernel (bf16); args already checked, M, N > 0.
template <typename Tin, typename Tout>
void launch_here(const GemmArgs& args, const Tin* A, const Tin* B, Tout* C, const Tin* bias,
                 Tout* pre, cudaStream_t stream) {
  const auto p = make_params(args, C, bias, pre, std::is_same_v<Tin, float> ? 4 : 8);
  switch (args.layout) {
    case Layout::NT:
      launch<a_storage(Layout::NT), b_storage(Layout::NT)>(args, A, B, p, stream);
      break;
    case Layout::NN:
      launch<a_storage(Layout::NN), b_storage(Layout::NN)>(args, A, B, p, stream);
      break;
    case Layout::TN:
      launch<a_storage(Layout::TN), b_storage(Layout::TN)>(args, A, B, p, stream);
      break;
  }
}

}  // namespace

template <typename Tin, typename Tout>
void gemm(const GemmArgs& args, const Tin* A, const Tin* B, Tout* C, const Tin* bias, Tout* pre,
          cudaStream_t stream) {
  static_assert((std::is_same_v<Tin, float> && std::is_same_v<Tout, float>) || std::is_same_v<Tin, bf16>,
                "gemm runs <float, float>, <bf16, bf16> and <bf16, float>");
  check_args<Tin>(args, bias);
  if (args.M == 0 || args.N == 0) return;
  if constexpr (std::is_same_v<Tin, bf16>) {
    if (gemm_mma_supported<Tout>(args, A, B, C, bias, pre)) {
      gemm_mma<Tout>(args, A, B, C, bias, pre, stream);
      return;
    }
  }
  launch_here<Tin, Tout>(args, A, B, C, bias, pre, stream);
}

template <typename Tout>
void gemm_wmma(const GemmArgs& args, const bf16* A, const bf16* B, Tout* C, const bf16* bias,
               Tout* pre, cudaStream_t stream) {
  check_args<bf16>(args, bias);
  if (args.M == 0 || args.N == 0) return;
  launch_here<bf16, Tout>(args, A, B, C, bias, pre, stream);
}

template void gemm<float, float>(const GemmArgs&, const float*, const float*, float*, const float*, float*,
                                 cudaStream_t);
template void gemm<bf16, bf16>(const GemmArgs&, const bf16*, const bf16*, bf16*, const bf16*, bf16*,
                               cudaStream_t);
template void gemm<bf16, float>(const GemmArgs&, const bf16*, const bf16*, float*, const bf16*, float*,
                                cudaStream_t);
template void gemm_wmma<bf16>(const GemmArgs&, const bf16*, const bf16*, bf16*, const bf16*, bf16*,
                              cudaStream_t);
template void gemm_wmma<float>(const GemmArgs&, const bf16*, const bf16*, float*, const bf16*,
                               float*, cudaStream_t);

}  // namespace kumiko::cuda
