// kumiko's fast bf16 tensor-core GEMM (contract: gemm.cuh; picked by gemm.cu when
// gemm_mma_supported holds, see gemm_mma.cuh): C[M, N] = op(A) op(B) (+ C) (+ bias) (GELU),
// bf16 operands, fp32 accumulation, Tout bf16 or float.
//
// The multistage design of CUTLASS's sm80 GEMMs, which also runs well on Hopper without
// wgmma; fragment layouts as in the PTX ISA ("Matrix Fragments for mma.m16n8k16 with
// floating point type", "ldmatrix"):
//   - block tile 128x128x32, 256 threads = 8 warps in a 2 (m) x 4 (n) grid, each warp a
//     64x32 tile of C = 4 x 4 mma.sync.m16n8k16 (bf16 x bf16 -> fp32), 64 fp32 accumulators
//     per thread, in registers throughout;
//   - 4-stage cp.async pipeline in 64 KiB of dynamic shared memory, one barrier per k-tile:
//     tile kt+3 is in flight while tile kt is multiplied. Every 16-byte chunk (8 elements
//     along an operand's contiguous dimension) lies wholly inside the matrix or wholly
//     outside it (leading dimensions are multiples of 8), and outside chunks are
//     zero-filled (cp.async src-size 0), so any M, N, K works;
//   - shared tiles keep each operand's stored orientation (as gemm.cu's kernels): "RK"
//     (stored [rows, K]: A in NT/NN, B in NT) as 128 rows x 32 k, "KR" (stored [K, rows]:
//     A in TN, B in NN/TN) as 32 k x 128 rows. ldmatrix.x4 loads the fragments; a KR
//     operand needs .trans, since its 8x8 matrices run along M or N where the fragments
//     run along K;
//   - XOR swizzle of the 16-byte chunks of each shared row (RK: chunk c of row r is stored
//     at c ^ ((r / 2) % 4); KR: chunk c of k-row k at c ^ (k % 8)), so that the eight rows
//     of every ldmatrix 8x8 matrix and the eight chunks of every quarter-warp of cp.async
//     fall in eight distinct 16-byte bank groups;
//   - epilogue from the accumulators: a lane holds, for each m16n8 tile, columns 2t, 2t+1
//     of rows g and g+8 (g = lane / 4, t = lane % 4) and finishes them as gemm.cu's kernels
//     do: (+C) (+bias) (pre, GELU), converted to Tout, as pairs when N is even,
//     bounds-checked element by element otherwise.
#include "kernels/cuda/gelu.cuh"
#include "kernels/cuda/gemm_mma.cuh"

#include "kernels/cuda/vector_util.cuh"
#include "kumiko/core/error.h"

namespace kumiko::cuda {

namespace {
using vec::cp_async16;
using vec::cp_async_commit;
using vec::cp_async_wait;

constexpr int kThreads = 256;
constexpr int BM = 128, BN = 128, BK = 32, kStages = 4;
constexpr int kWarpsM = 2, kWarpsN = 4;
constexpr int WM = BM / kWarpsM, WN = BN / kWarpsN;      // 64 x 32 per warp
constexpr int MT = WM / 16, NT = WN / 8;                 // 4 x 4 m16n8 tiles per warp
constexpr int kTileBytes = BM * BK * int(sizeof(bf16));  // one operand's k-tile, 8 KiB
constexpr int kStageBytes = 2 * kTileBytes;              // A tile, then B tile
constexpr int kSmemBytes = kStages * kStageBytes;        // 64 KiB
static_assert(BM == BN, "both operand tiles share one shared-memory shape");
static_assert(BM == 128 && BK == 32,
              "the swizzles and chunk maps below are written for 128x32 tiles");
static_assert(kWarpsM * kWarpsN * 32 == kThreads, "one warp per warp tile");
static_assert(NT % 2 == 0, "B fragments are loaded two n8 tiles at a time");
static_assert(BM * BK / 8 == 2 * kThreads, "two 16-byte chunks per thread and operand");

enum class Storage { RK, KR };

constexpr Storage a_storage(Layout l) { return l == Layout::TN ? Storage::KR : Storage::RK; }
constexpr Storage b_storage(Layout l) { return l == Layout::NT ? Storage::RK : Storage::KR; }


// Byte offset, within one operand's tile, of 16-byte chunk c of shared row r.
// RK: r = row of M or N (0..127), 4 chunks of 8 k; KR: r = k (0..31), 16 chunks of 8 rows.
template <Storage S>
__device__ __forceinline__ uint32_t chunk_offset(int r, int c) {
  if constexpr (S == Storage::RK) {
    return static_cast<uint32_t>(r * (BK * 2) + ((c ^ ((r >> 1) & 3)) << 4));
  } else {
    return static_cast<uint32_t>(r * (BM * 2) + ((c ^ (r & 7)) << 4));
  }
}


// Four 8x8 b16 matrices; lane l supplies the address of row l % 8 of matrix l / 8 and
// receives, of matrix i in r[i], row l / 4, columns 2 (l % 4) and +1 (with kTrans: column
// l / 4, rows 2 (l % 4) and +1, i.e. the same of the transposed matrix).
template <bool kTrans>
__device__ __forceinline__ void ldmatrix_x4(uint32_t& r0, uint32_t& r1, uint32_t& r2, uint32_t& r3,
                                            uint32_t addr) {
  if constexpr (kTrans) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(addr)
                 : "memory");
  } else {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(addr)
                 : "memory");
  }
}

// d += a b for one m16n8k16 tile; a: 4 registers of bf16 pairs, b: 2, d: 4 fp32.
__device__ __forceinline__ void mma_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                         uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
      "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Issues the cp.async of one operand's k-tile (rows r0.., k k0..) into the tile at shared
// address s: 512 chunks, two per thread, consecutive threads on consecutive chunks of a
// stored row (coalesced). RK: chunk c is row c / 4, k (c % 4) * 8; KR: k c / 16, rows
// (c % 16) * 8. A chunk outside the matrix is zero-filled; X is then the never-read source.
template <Storage S>
__device__ __forceinline__ void issue_tile(uint32_t s, const bf16* X, int64_t ld, int rows, int K,
                                           int r0, int k0) {
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int c = threadIdx.x + kThreads * i;
    if constexpr (S == Storage::RK) {
      const int row = c >> 2, ch = c & 3;
      const bool in = r0 + row < rows && k0 + ch * 8 < K;
      cp_async16(s + chunk_offset<S>(row, ch), in ? X + (r0 + row) * ld + (k0 + ch * 8) : X, in);
    } else {
      const int k = c >> 4, ch = c & 15;
      const bool in = k0 + k < K && r0 + ch * 8 < rows;
      cp_async16(s + chunk_offset<S>(k, ch), in ? X + (k0 + k) * ld + (r0 + ch * 8) : X, in);
    }
  }
}

// A fragments of the warp's MT m16 tiles (rows m_w + 16 i ..) at k offset kk of the tile at
// s. PTX m16n8k16 A layout: a[i][0] = rows 0-7 x k 0-7, [1] = rows 8-15 x k 0-7,
// [2] = rows 0-7 x k 8-15, [3] = rows 8-15 x k 8-15 (each the 8x8 matrix an ldmatrix
// delivers: row g, k 2t and 2t+1). Lane l addresses row l % 8 of matrix q = l / 8.
template <Storage S>
__device__ __forceinline__ void load_a(uint32_t (&a)[MT][4], uint32_t s, int m_w, int kk,
                                       int lane) {
  const int q = lane >> 3, r = lane & 7;
#pragma unroll
  for (int i = 0; i < MT; ++i) {
    if constexpr (S == Storage::RK) {
      // Shared rows are m: matrix q at m + 8 (q % 2), k + 8 (q / 2).
      const uint32_t addr =
          s + chunk_offset<S>(m_w + i * 16 + (q & 1) * 8 + r, (kk >> 3) + (q >> 1));
      ldmatrix_x4<false>(a[i][0], a[i][1], a[i][2], a[i][3], addr);
    } else {
      // Shared rows are k, transposed: matrix q at k + 8 (q / 2), m + 8 (q % 2).
      const uint32_t addr =
          s + chunk_offset<S>(kk + (q >> 1) * 8 + r, ((m_w + i * 16) >> 3) + (q & 1));
      ldmatrix_x4<true>(a[i][0], a[i][1], a[i][2], a[i][3], addr);
    }
  }
}

// B fragments of the warp's NT n8 tiles (columns n_w + 8 j ..) at k offset kk of the tile
// at s. PTX m16n8k16 B layout: b[j][0] = k 0-7, b[j][1] = k 8-15 of column g, k 2t and
// 2t+1. One ldmatrix.x4 serves n8 tiles 2 j2 and 2 j2 + 1: matrix q is n + 8 (q / 2),
// k + 8 (q % 2).
template <Storage S>
__device__ __forceinline__ void load_b(uint32_t (&b)[NT][2], uint32_t s, int n_w, int kk,
                                       int lane) {
  const int q = lane >> 3, r = lane & 7;
#pragma unroll
  for (int j2 = 0; j2 < NT / 2; ++j2) {
    const int j = 2 * j2;
    if constexpr (S == Storage::RK) {  // shared rows are n: the matrices as stored
      const uint32_t addr =
          s + chunk_offset<S>(n_w + j * 8 + (q >> 1) * 8 + r, (kk >> 3) + (q & 1));
      ldmatrix_x4<false>(b[j][0], b[j][1], b[j + 1][0], b[j + 1][1], addr);
    } else {  // shared rows are k: transposed
      const uint32_t addr =
          s + chunk_offset<S>(kk + (q & 1) * 8 + r, ((n_w + j * 8) >> 3) + (q >> 1));
      ldmatrix_x4<true>(b[j][0], b[j][1], b[j + 1][0], b[j + 1][1], addr);
    }
  }
}

template <typename Tout>
struct MmaEpilogue {
  Tout* C;
  Tout* pre;         // nullable
  const bf16* bias;  // non-null unless epi == none
  int M, N;
  bool accumulate;
  Epilogue epi;
};

// Two adjacent elements as one access; the caller guarantees 2-element alignment.
__device__ __forceinline__ void load2(const float* p, float& x0, float& x1) {
  const float2 v = *reinterpret_cast<const float2*>(p);
  x0 = v.x, x1 = v.y;
}
__device__ __forceinline__ void load2(const bf16* p, float& x0, float& x1) {
  const __nv_bfloat162 v = *reinterpret_cast<const __nv_bfloat162*>(p);
  x0 = __low2float(v), x1 = __high2float(v);
}
__device__ __forceinline__ void store2(float* p, float x0, float x1) {
  *reinterpret_cast<float2*>(p) = make_float2(x0, x1);
}
__device__ __forceinline__ void store2(bf16* p, float x0, float x1) {
  *reinterpret_cast<__nv_bfloat162*>(p) = __floats2bfloat162_rn(x0, x1);  // .x = x0 (low address)
}

// Finishes C[m, n] and C[m, n + 1] from the accumulators x0, x1; the caller guarantees
// m < M, n < N and n even.
template <typename Tout>
__device__ __forceinline__ void finish_pair(const MmaEpilogue<Tout>& p, int m, int n, float x0,
                                            float x1) {
  const int64_t off = int64_t{m} * p.N + n;
  if (p.N % 2 == 0) {  // n + 1 < N, and off is even: the 16-byte aligned pointers allow pairs
    if (p.accumulate) {
      float c0, c1;
      load2(p.C + off, c0, c1);
      x0 += c0, x1 += c1;
    }
    if (p.epi != Epilogue::none) {
      float b0, b1;
      load2(p.bias + n, b0, b1);
      x0 += b0, x1 += b1;
    }
    if (p.epi == Epilogue::bias_gelu) {
      if (p.pre) store2(p.pre + off, x0, x1);
      x0 = gelu_tanh(x0), x1 = gelu_tanh(x1);
    }
    store2(p.C + off, x0, x1);
  } else {
    const float v[2] = {x0, x1};
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      if (n + e >= p.N) break;
      float x = v[e];
      if (p.accumulate) x += to_f(p.C[off + e]);
      if (p.epi != Epilogue::none) x += to_f(p.bias[n + e]);
      if (p.epi == Epilogue::bias_gelu) {
        if (p.pre) p.pre[off + e] = from_f<Tout>(x);
        x = gelu_tanh(x);
      }
      p.C[off + e] = from_f<Tout>(x);
    }
  }
}

// Two blocks per SM: <= 128 registers per thread, 2 x 64 KiB of shared memory.
template <Storage SA, Storage SB, typename Tout>
__global__ void __launch_bounds__(kThreads, 2)
    gemm_mma_kernel(const bf16* __restrict__ A, const bf16* __restrict__ B, MmaEpilogue<Tout> p,
                    int K) {
  extern __shared__ __align__(128) unsigned char smem[];
  const uint32_t smem0 = static_cast<uint32_t>(__cvta_generic_to_shared(smem));

  const int M = p.M, N = p.N;
  const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
  const int64_t lda = SA == Storage::RK ? K : M;
  const int64_t ldb = SB == Storage::RK ? K : N;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int m_w = (warp / kWarpsN) * WM, n_w = (warp % kWarpsN) * WN;

  float acc[MT][NT][4];
#pragma unroll
  for (int i = 0; i < MT; ++i)
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;

  // k-tile kt goes to stage kt % kStages and forms cp.async group kt (empty groups pad the
  // count past the last tile), so "all but the newest kStages - 2 groups complete" means
  // "tile kt has landed" at the top of step kt.
  const int nk = (K + BK - 1) / BK;
  auto issue = [&](int kt) {
    const uint32_t s = smem0 + (kt % kStages) * kStageBytes;
    issue_tile<SA>(s, A, lda, M, K, m0, kt * BK);
    issue_tile<SB>(s + kTileBytes, B, ldb, N, K, n0, kt * BK);
  };
#pragma unroll
  for (int kt = 0; kt < kStages - 1; ++kt) {
    if (kt < nk) issue(kt);
    cp_async_commit();
  }
  for (int kt = 0; kt < nk; ++kt) {
    cp_async_wait<kStages - 2>();  // this thread's chunks of tile kt have landed
    // ... and everyone's; and every warp is done with step kt-1, whose stage
    // ((kt + kStages - 1) % kStages) is refilled next.
    __syncthreads();
    if (kt + kStages - 1 < nk) issue(kt + kStages - 1);
    cp_async_commit();

    const uint32_t s = smem0 + (kt % kStages) * kStageBytes;
#pragma unroll
    for (int kk = 0; kk < BK; kk += 16) {
      uint32_t a[MT][4], b[NT][2];
      load_a<SA>(a, s, m_w, kk, lane);
      load_b<SB>(b, s + kTileBytes, n_w, kk, lane);
#pragma unroll
      for (int i = 0; i < MT; ++i)
#pragma unroll
        for (int j = 0; j < NT; ++j) mma_bf16(acc[i][j], a[i], b[j][0], b[j][1]);
    }
  }
  cp_async_wait<0>();  // only empty groups can remain; no copy outlives the block

  // PTX m16n8 accumulator layout: d[0], d[1] = row g, columns 2t, 2t+1; d[2], d[3] = row g+8.
  const int g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int i = 0; i < MT; ++i) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int m = m0 + m_w + i * 16 + h * 8 + g;
      if (m >= M) continue;
#pragma unroll
      for (int j = 0; j < NT; ++j) {
        const int n = n0 + n_w + j * 8 + 2 * t;
        if (n < N) finish_pair(p, m, n, acc[i][j][2 * h], acc[i][j][2 * h + 1]);
      }
    }
  }
}

template <Storage SA, Storage SB, typename Tout>
void launch(const GemmArgs& args, const bf16* A, const bf16* B, const MmaEpilogue<Tout>& p,
            cudaStream_t stream) {
  auto* kernel = gemm_mma_kernel<SA, SB, Tout>;
  vec::allow_dynamic_smem(kernel, kSmemBytes, "gemm (mma.sync)");
  // As much shared memory as the SM has, so that two blocks (2 x 64 KiB) fit side by side.
  KUMIKO_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout,
                                         int{cudaSharedmemCarveoutMaxShared}));
  const dim3 grid(static_cast<unsigned>(ceil_div(args.N, BN)),
                  static_cast<unsigned>(ceil_div(args.M, BM)));
  kernel<<<grid, kThreads, kSmemBytes, stream>>>(A, B, p, static_cast<int>(args.K));
  KUMIKO_CUDA_LAUNCH_CHECK();
}

}  // namespace

template <typename Tout>
bool gemm_mma_supported(const GemmArgs& args, const bf16* A, const bf16* B, const Tout* C,
                        const bf16* bias, const Tout* pre) {
  const int64_t lda = a_storage(args.layout) == Storage::RK ? args.K : args.M;
  const int64_t ldb = b_storage(args.layout) == Storage::RK ? args.K : args.N;
  return lda % 8 == 0 && ldb % 8 == 0 && vec::aligned16({A, B, C, bias, pre});
}

template <typename Tout>
void gemm_mma(const GemmArgs& args, const bf16* A, const bf16* B, Tout* C, const bf16* bias,
              Tout* pre, cudaStream_t stream) {
  KUMIKO_CHECK(gemm_mma_supported(args, A, B, C, bias, pre),
               "gemm_mma: leading dimensions (M=", args.M, " N=", args.N, " K=", args.K,
               ") or pointer alignment not supported");
  if (args.M == 0 || args.N == 0) return;
  const int M = static_cast<int>(args.M), N = static_cast<int>(args.N);
  const MmaEpilogue<Tout> p{C, pre, bias, M, N, args.accumulate, args.epilogue};
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

template bool gemm_mma_supported<bf16>(const GemmArgs&, const bf16*, const bf16*, const bf16*,
                                       const bf16*, const bf16*);
template bool gemm_mma_supported<float>(const GemmArgs&, const bf16*, const bf16*, const float*,
                                        const bf16*, const float*);
template void gemm_mma<bf16>(const GemmArgs&, const bf16*, const bf16*, bf16*, const bf16*, bf16*,
                             cudaStream_t);
template void gemm_mma<float>(const GemmArgs&, const bf16*, const bf16*, float*, const bf16*,
                              float*, cudaStream_t);

}  // namespace kumiko::cuda
