// GELU, tanh approximation (kumiko::cpu::gelu_*), elementwise in fp32 with tanhf
// (a few ulp, unlike the hardware tanh.approx whose 2^-11 error would show in fp32).
// Grid-stride over 16-byte vectors when every pointer is 16-byte aligned, element-wise
// otherwise (vec::launch_pointwise). Each element is read and written by one thread,
// its inputs read first: dx may alias dout.
#include "kernels/cuda/gelu.cuh"

#include "kernels/cuda/vector_util.cuh"

namespace kumiko::cuda {

namespace {

constexpr float kSqrt2OverPi = 0.7978845608028654f;
constexpr float kCubic = 0.044715f;

template <typename T>
struct GeluForward {
  T* out;
  const T* x;
  template <int kM>
  __device__ void apply(int64_t j) const {
    float v[kM];
    vec::load_f<kM>(x, j, v);
#pragma unroll
    for (int e = 0; e < kM; ++e) {
      const float u = kSqrt2OverPi * (v[e] + kCubic * v[e] * v[e] * v[e]);
      v[e] = 0.5f * v[e] * (1.0f + tanhf(u));
    }
    vec::store_f<kM>(out, j, v);
  }
};

// dx = (overwrite ? 0 : dx) + dout * gelu'(x); dx is not read when overwriting (it may
// hold garbage, or alias dout).
template <typename T, bool kOverwrite>
struct GeluBackward {
  T* dx;
  const T* dout;
  const T* x;
  template <int kM>
  __device__ void apply(int64_t j) const {
    float xv[kM], g[kM], d[kM];
    vec::load_f<kM>(x, j, xv);
    vec::load_f<kM>(dout, j, g);
    if constexpr (!kOverwrite) vec::load_f<kM>(dx, j, d);
#pragma unroll
    for (int e = 0; e < kM; ++e) {
      const float xi = xv[e];
      const float th = tanhf(kSqrt2OverPi * (xi + kCubic * xi * xi * xi));
      const float sech2 = 1.0f - th * th;
      const float grad =
          0.5f * (1.0f + th) + 0.5f * xi * sech2 * kSqrt2OverPi * (1.0f + 3.0f * kCubic * xi * xi);
      if constexpr (kOverwrite) {
        d[e] = g[e] * grad;
      } else {
        d[e] += g[e] * grad;
      }
    }
    vec::store_f<kM>(dx, j, d);
  }
};

}  // namespace

template <typename T>
void gelu_forward(T* out, const T* x, int64_t n, cudaStream_t stream) {
  vec::launch_pointwise<vec::kVec16<T>>(GeluForward<T>{out, x}, n, vec::aligned16({out, x}),
                                        stream);
}

template <typename T>
void gelu_backward(T* dx, const T* dout, const T* x, int64_t n, bool overwrite,
                   cudaStream_t stream) {
  constexpr int kN = vec::kVec16<T>;
  const bool vectorise = vec::aligned16({dx, dout, x});
  if (overwrite) {
    vec::launch_pointwise<kN>(GeluBackward<T, true>{dx, dout, x}, n, vectorise, stream);
  } else {
    vec::launch_pointwise<kN>(GeluBackward<T, false>{dx, dout, x}, n, vectorise, stream);
  }
}

template void gelu_forward<float>(float*, const float*, int64_t, cudaStream_t);
template void gelu_forward<bf16>(bf16*, const bf16*, int64_t, cudaStream_t);
template void gelu_backward<float>(float*, const float*, const float*, int64_t, bool, cudaStream_t);
template void gelu_backward<bf16>(bf16*, const bf16*, const bf16*, int64_t, bool, cudaStream_t);

}  // namespace kumiko::cuda
