// Multi-tensor fused AdamW: one launch updates a whole list of tensors.
//
// grid.y walks the tensor list (strided when the list is longer than 65535), grid.x
// is sized from the largest tensor (capped; threads grid-stride within a tensor), so
// blocks past the end of a smaller tensor exit at once. A tensor whose pointers are
// 16-byte aligned (8-byte for the bf16 copy) is processed 4 elements per thread with
// vector accesses, its n % 4 tail element-wise; otherwise element-wise throughout.
// Per element, in fp32 and in the order of kumiko::cpu::adamw_update:
//   g = grad * grad_scale;  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
//   p = p (1 - lr wd) - (lr / bc1) m / (sqrt(v) / sqrt(bc2) + eps)
// then the bf16 copy (round to nearest even) when the tensor has one.
#include "kernels/cuda/adamw.cuh"

#include <algorithm>
#include <cmath>

namespace kumiko::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocksPerTensor = 1024;

// Step constants, folded once on the host in double.
struct Consts {
  float lr, b1, b2, one_b1, one_b2, eps, grad_scale, step_size, inv_sqrt_bc2;
};

__device__ __forceinline__ void adamw_element(float& p, float& m, float& v, float grad, float decay,
                                              const Consts& k) {
  const float g = grad * k.grad_scale;
  m = k.b1 * m + k.one_b1 * g;
  v = k.b2 * v + k.one_b2 * g * g;
  p = p * decay - k.step_size * m / (sqrtf(v) * k.inv_sqrt_bc2 + k.eps);
}

__device__ __forceinline__ bool aligned(const void* p, uintptr_t bytes) {
  return reinterpret_cast<uintptr_t>(p) % bytes == 0;
}

__global__ void adamw_kernel(const AdamWTensor* __restrict__ tensors, int count, Consts k) {
  const int64_t stride = int64_t{gridDim.x} * blockDim.x;
  const int64_t first = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  for (int t = blockIdx.y; t < count; t += gridDim.y) {
    const AdamWTensor d = tensors[t];
    // 1 - lr * wd as the CPU forms it (in double, then rounded once).
    const float decay = static_cast<float>(1.0 - double(k.lr) * double(d.weight_decay));
    const bool vec = aligned(d.param, 16) && aligned(d.grad, 16) && aligned(d.m, 16) && aligned(d.v, 16) &&
                     aligned(d.param_bf16, 8);
    const int64_t n_vec = vec ? d.n / 4 : 0;
    for (int64_t i = first; i < n_vec; i += stride) {
      float4 p = reinterpret_cast<const float4*>(d.param)[i];
      float4 m = reinterpret_cast<const float4*>(d.m)[i];
      float4 v = reinterpret_cast<const float4*>(d.v)[i];
      const float4 g = reinterpret_cast<const float4*>(d.grad)[i];
      adamw_element(p.x, m.x, v.x, g.x, decay, k);
      adamw_element(p.y, m.y, v.y, g.y, decay, k);
      adamw_element(p.z, m.z, v.z, g.z, decay, k);
      adamw_element(p.w, m.w, v.w, g.w, decay, k);
      reinterpret_cast<float4*>(d.param)[i] = p;
      reinterpret_cast<float4*>(d.m)[i] = m;
      reinterpret_cast<float4*>(d.v)[i] = v;
      if (d.param_bf16) {
        __nv_bfloat162* out = reinterpret_cast<__nv_bfloat162*>(d.param_bf16) + 2 * i;
        out[0] = __floats2bfloat162_rn(p.x, p.y);
        out[1] = __floats2bfloat162_rn(p.z, p.w);
      }
    }
    // Element-wise: the tail after the vectors, or the whole tensor when unaligned.
    for (int64_t i = 4 * n_vec + first; i < d.n; i += stride) {
      float p = d.param[i], m = d.m[i], v = d.v[i];
      adamw_element(p, m, v, d.grad[i], decay, k);
      d.param[i] = p;
      d.m[i] = m;
      d.v[i] = v;
      if (d.param_bf16) d.param_bf16[i] = __float2bfloat16_rn(p);
    }
  }
}

}  // namespace

void adamw_multi_tensor(const AdamWTensor* tensors, int count, int64_t max_n, const AdamWStep& step,
                        cudaStream_t stream) {
  if (count <= 0 || max_n <= 0) return;
  Consts k;
  k.lr = step.lr;
  k.b1 = step.beta1;
  k.b2 = step.beta2;
  k.one_b1 = static_cast<float>(1.0 - double(step.beta1));
  k.one_b2 = static_cast<float>(1.0 - double(step.beta2));
  k.eps = step.eps;
  k.grad_scale = step.grad_scale;
  k.step_size = static_cast<float>(double(step.lr) / double(step.bias_correction1));
  k.inv_sqrt_bc2 = static_cast<float>(1.0 / std::sqrt(double(step.bias_correction2)));
  const dim3 grid(static_cast<unsigned>(std::min(ceil_div(ceil_div(max_n, 4), kThreads), kMaxBlocksPerTensor)),
                  static_cast<unsigned>(std::min(count, 65535)));
  adamw_kernel<<<grid, kThreads, 0, stream>>>(tensors, count, k);
  KUMIKO_CUDA_LAUNCH_CHECK();
}

}  // namespace kumiko::cuda
