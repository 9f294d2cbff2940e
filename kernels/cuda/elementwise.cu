// Casts, residual additions, scaling and poisoning, elementwise in fp32. Grid-stride
// over vectors (16 bytes of the wider type) when every pointer is aligned to its
// vector, element-wise otherwise (vec::launch_pointwise). Each element is read and
// written by one thread, inputs first, so outputs may alias inputs.
#include "kernels/cuda/elementwise.cuh"

#include <type_traits>

#include "kernels/cuda/vector_util.cuh"

namespace kumiko::cuda {

namespace {

template <typename Tout, typename Tin>
struct Cast {
  Tout* out;
  const Tin* in;
  template <int kM>
  __device__ void apply(int64_t j) const {
    float v[kM];
    vec::load_f<kM>(in, j, v);  // bf16 -> fp32 exact; fp32 -> bf16 rounds to nearest even
    vec::store_f<kM>(out, j, v);
  }
};

template <typename T>
struct Add {
  T* out;
  const T* a;
  const T* b;
  template <int kM>
  __device__ void apply(int64_t j) const {
    float x[kM], y[kM];
    vec::load_f<kM>(a, j, x);
    vec::load_f<kM>(b, j, y);
#pragma unroll
    for (int e = 0; e < kM; ++e) x[e] += y[e];
    vec::store_f<kM>(out, j, x);
  }
};

struct Scale {
  float* x;
  float s;
  template <int kM>
  __device__ void apply(int64_t j) const {
    float v[kM];
    vec::load_f<kM>(x, j, v);
#pragma unroll
    for (int e = 0; e < kM; ++e) v[e] *= s;
    vec::store_f<kM>(x, j, v);
  }
};

template <typename T>
void add_impl(T* out, const T* a, const T* b, int64_t n, cudaStream_t stream) {
  vec::launch_pointwise<vec::kVec16<T>>(Add<T>{out, a, b}, n, vec::aligned16({out, a, b}), stream);
}

}  // namespace

template <typename Tout, typename Tin>
void cast(Tout* out, const Tin* in, int64_t n, cudaStream_t stream) {
  if constexpr (std::is_same_v<Tout, Tin>) {
    if (n > 0 && static_cast<const void*>(out) != static_cast<const void*>(in)) {
      KUMIKO_CUDA_CHECK(
          cudaMemcpyAsync(out, in, size_t(n) * sizeof(Tin), cudaMemcpyDeviceToDevice, stream));
    }
  } else {
    // A vector is 16 bytes of the wider type (4 elements): the narrower side moves 8.
    constexpr int kN = int(16 / (sizeof(Tout) > sizeof(Tin) ? sizeof(Tout) : sizeof(Tin)));
    const bool vectorise =
        vec::aligned(out, kN * sizeof(Tout)) && vec::aligned(in, kN * sizeof(Tin));
    vec::launch_pointwise<kN>(Cast<Tout, Tin>{out, in}, n, vectorise, stream);
  }
}

template <typename T>
void add(T* out, const T* a, const T* b, int64_t n, cudaStream_t stream) {
  add_impl(out, a, b, n, stream);
}

template <typename T>
void add_inplace(T* out, const T* a, int64_t n, cudaStream_t stream) {
  add_impl(out, out, a, n, stream);
}

void scale_inplace(float* x, float s, int64_t n, cudaStream_t stream) {
  vec::launch_pointwise<vec::kVec16<float>>(Scale{x, s}, n, vec::aligned16({x}), stream);
}

void poison(void* p, size_t bytes, cudaStream_t stream) {
  if (bytes > 0) KUMIKO_CUDA_CHECK(cudaMemsetAsync(p, 0xFF, bytes, stream));
}

template void cast<bf16, float>(bf16*, const float*, int64_t, cudaStream_t);
template void cast<float, bf16>(float*, const bf16*, int64_t, cudaStream_t);
template void cast<float, float>(float*, const float*, int64_t, cudaStream_t);
template void cast<bf16, bf16>(bf16*, const bf16*, int64_t, cudaStream_t);
template void add<float>(float*, const float*, const float*, int64_t, cudaStream_t);
template void add<bf16>(bf16*, const bf16*, const bf16*, int64_t, cudaStream_t);
template void add_inplace<float>(float*, const float*, int64_t, cudaStream_t);
template void add_inplace<bf16>(bf16*, const bf16*, int64_t, cudaStream_t);

}  // namespace kumiko::cuda
