// GELU, tanh approximation (kumiko::cpu::gelu_*), elementwise in fp32 in its sigmoid
// form with expf (a few ulp; the hardware tanh.approx's 2^-11 error would show in fp32,
// and 1 + tanh loses the relative accuracy of the negative tail).
// Grid-stride over 16-byte vectors when every pointer is 16-byte aligned, element-wise
// otherwise (vec::launch_map). Each element is read and written by one thread,
// its inputs read first: dx may alias dout.
#include "kernels/cuda/gelu.cuh"

#include "kernels/cuda/vector_util.cuh"

namespace kumiko::cuda {

namespace {

struct GeluForward {
  __device__ __forceinline__ float operator()(float x) const { return gelu_tanh(x); }
};

// dout gelu'(x), plus dx when accumulating (dx then a third input; when overwriting dx
// is not read: it may hold garbage, or alias dout).
struct GeluBackward {
  __device__ __forceinline__ float operator()(float x, float g) const { return g * grad(x); }
  __device__ __forceinline__ float operator()(float x, float g, float d) const {
    return d + g * grad(x);
  }
  __device__ __forceinline__ static float grad(float x) { return gelu_tanh_grad(x); }
};

}  // namespace

template <typename T>
void gelu_forward(T* out, const T* x, int64_t n, cudaStream_t stream) {
  vec::launch_map(GeluForward{}, out, {x}, n, stream);
}

template <typename T>
void gelu_backward(T* dx, const T* dout, const T* x, int64_t n, bool overwrite,
                   cudaStream_t stream) {
  if (overwrite) {
    vec::launch_map(GeluBackward{}, dx, {x, dout}, n, stream);
  } else {
    vec::launch_map(GeluBackward{}, dx, {x, dout, dx}, n, stream);
  }
}

template void gelu_forward<float>(float*, const float*, int64_t, cudaStream_t);
template void gelu_forward<bf16>(bf16*, const bf16*, int64_t, cudaStream_t);
template void gelu_backward<float>(float*, const float*, const float*, int64_t, bool, cudaStream_t);
template void gelu_backward<bf16>(bf16*, const bf16*, const bf16*, int64_t, bool, cudaStream_t);

}  // namespace kumiko::cuda
