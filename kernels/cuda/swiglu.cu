// SwiGLU gate (kumiko::cpu::swiglu_*): out = silu(gate) up, elementwise in fp32 with
// expf. Grid-stride over 16-byte vectors when every pointer is 16-byte aligned,
// element-wise otherwise (vec::launch_map; the backward, with two outputs, is its own
// vec::launch_pointwise op). Each element is read and written by one thread, all its
// inputs read first, so outputs may alias inputs element for element.
#include "kernels/cuda/swiglu.cuh"

#include "kernels/cuda/vector_util.cuh"

namespace kumiko::cuda {

namespace {

__device__ __forceinline__ float sigmoid(float g) { return 1.0f / (1.0f + expf(-g)); }

struct SwigluForward {
  __device__ __forceinline__ float operator()(float g, float u) const { return g * sigmoid(g) * u; }
};

// dgate (+)= dout up silu'(gate), silu'(g) = sg (1 + g (1 - sg)); dup (+)= dout silu(gate).
// When overwriting, dgate and dup are not read.
template <typename T, bool kOverwrite>
struct SwigluBackward {
  T* dgate;
  T* dup;
  const T* dout;
  const T* gate;
  const T* up;
  template <int kM>
  __device__ void apply(int64_t j) const {
    float g[kM], u[kM], d[kM], dg[kM], du[kM];
    vec::load_f<kM>(gate, j, g);
    vec::load_f<kM>(up, j, u);
    vec::load_f<kM>(dout, j, d);
    if constexpr (!kOverwrite) {
      vec::load_f<kM>(dgate, j, dg);
      vec::load_f<kM>(dup, j, du);
    }
#pragma unroll
    for (int e = 0; e < kM; ++e) {
      const float sg = sigmoid(g[e]);
      const float ddg = d[e] * u[e] * sg * (1.0f + g[e] * (1.0f - sg));
      const float ddu = d[e] * (g[e] * sg);
      if constexpr (kOverwrite) {
        dg[e] = ddg;
        du[e] = ddu;
      } else {
        dg[e] += ddg;
        du[e] += ddu;
      }
    }
    vec::store_f<kM>(dgate, j, dg);
    vec::store_f<kM>(dup, j, du);
  }
};

}  // namespace

template <typename T>
void swiglu_forward(T* out, const T* gate, const T* up, int64_t n, cudaStream_t stream) {
  vec::launch_map(SwigluForward{}, out, {gate, up}, n, stream);
}

template <typename T>
void swiglu_backward(T* dgate, T* dup, const T* dout, const T* gate, const T* up, int64_t n,
                     bool overwrite, cudaStream_t stream) {
  const bool vectorise = vec::aligned16({dgate, dup, dout, gate, up});
  if (overwrite) {
    vec::launch_pointwise<vec::kVec16<T>>(SwigluBackward<T, true>{dgate, dup, dout, gate, up}, n,
                                          vectorise, stream);
  } else {
    vec::launch_pointwise<vec::kVec16<T>>(SwigluBackward<T, false>{dgate, dup, dout, gate, up}, n,
                                          vectorise, stream);
  }
}

template void swiglu_forward<float>(float*, const float*, const float*, int64_t, cudaStream_t);
template void swiglu_forward<bf16>(bf16*, const bf16*, const bf16*, int64_t, cudaStream_t);
template void swiglu_backward<float>(float*, float*, const float*, const float*, const float*,
                                     int64_t, bool, cudaStream_t);
template void swiglu_backward<bf16>(bf16*, bf16*, const bf16*, const bf16*, const bf16*, int64_t,
                                    bool, cudaStream_t);

}  // namespace kumiko::cuda
