// Rotary position embedding in place on the q and k heads of packed qkv
// (kumiko::cpu::rope_*, HF Llama rotate_half convention).
//
// One thread per (b, t, i), i < D/2: it computes the angle t * theta^(-2i/D) in double
// exactly as the CPU writes it (pow, then the product), rounds cos and sin to float,
// and rotates the pair (i, i + D/2) of every q and k head of token (b, t) in fp32.
// Consecutive threads take consecutive i, so a warp's accesses to one head are
// contiguous; the trigonometry is paid once per pair for all Hq + Hkv heads.
// The backward is the rotation by -angle (sin negated after rounding, as on the CPU).
#include "kernels/cuda/rope.cuh"

#include <algorithm>

#include "kumiko/core/error.h"

namespace kumiko::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 65535;

template <typename T>
__global__ void __launch_bounds__(kThreads)
    rope_kernel(T* qkv, int64_t BT, int64_t T_, int64_t heads, int64_t row, int64_t D, double theta,
                float sin_sign) {
  const int64_t half = D / 2;
  const int64_t total = BT * half;
  const int64_t stride = int64_t{gridDim.x} * blockDim.x;
  for (int64_t idx = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; idx < total; idx += stride) {
    const int64_t i = idx % half, bt = idx / half, t = bt % T_;
    const double inv_freq = pow(theta, -2.0 * static_cast<double>(i) / double(D));
    const double angle = static_cast<double>(t) * inv_freq;
    const float c = static_cast<float>(cos(angle));
    const float s = sin_sign * static_cast<float>(sin(angle));
    T* tok = qkv + bt * row;
    for (int64_t h = 0; h < heads; ++h) {
      T* x = tok + h * D;
      const float x0 = to_f(x[i]), x1 = to_f(x[i + half]);
      x[i] = from_f<T>(x0 * c - x1 * s);
      x[i + half] = from_f<T>(x1 * c + x0 * s);
    }
  }
}

template <typename T>
void rope_apply(T* qkv, int64_t B, int64_t T_, int64_t Hq, int64_t Hkv, int64_t D, double theta,
                float sin_sign, cudaStream_t stream) {
  KUMIKO_CHECK(D % 2 == 0, "rope: head dim D must be even, got ", D);
  const int64_t work = B * T_ * (D / 2);
  if (work <= 0 || Hq + Hkv <= 0) return;
  const auto blocks = static_cast<unsigned>(std::min(ceil_div(work, kThreads), kMaxBlocks));
  rope_kernel<T><<<blocks, kThreads, 0, stream>>>(qkv, B * T_, T_, Hq + Hkv, (Hq + 2 * Hkv) * D, D,
                                                  theta, sin_sign);
  KUMIKO_CUDA_LAUNCH_CHECK();
}

}  // namespace

template <typename T>
void rope_forward(T* qkv, int64_t B, int64_t T_, int64_t Hq, int64_t Hkv, int64_t D, double theta,
                  cudaStream_t stream) {
  rope_apply(qkv, B, T_, Hq, Hkv, D, theta, 1.0f, stream);
}

template <typename T>
void rope_backward(T* dqkv, int64_t B, int64_t T_, int64_t Hq, int64_t Hkv, int64_t D, double theta,
                   cudaStream_t stream) {
  // The rotation is orthogonal: its transpose is the rotation by -angle.
  rope_apply(dqkv, B, T_, Hq, Hkv, D, theta, -1.0f, stream);
}

template void rope_forward<float>(float*, int64_t, int64_t, int64_t, int64_t, int64_t, double,
                                  cudaStream_t);
template void rope_forward<bf16>(bf16*, int64_t, int64_t, int64_t, int64_t, int64_t, double,
                                 cudaStream_t);
template void rope_backward<float>(float*, int64_t, int64_t, int64_t, int64_t, int64_t, double,
                                   cudaStream_t);
template void rope_backward<bf16>(bf16*, int64_t, int64_t, int64_t, int64_t, int64_t, double,
                                  cudaStream_t);

}  // namespace kumiko::cuda
