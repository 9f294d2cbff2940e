// Casts and the residual addition, elementwise in fp32. Grid-stride
// over vectors (16 bytes of the wider type) when every pointer is aligned to its
// vector, element-wise otherwise (vec::launch_map). Each element is read and written
// by one thread, inputs first, so outputs may alias inputs.
#include "kernels/cuda/elementwise.cuh"

#include <type_traits>

#include "kernels/cuda/vector_util.cuh"

namespace kumiko::cuda {

namespace {

// bf16 -> fp32 is exact; fp32 -> bf16 (the store) rounds to nearest even.
struct Identity {
  __device__ __forceinline__ float operator()(float v) const { return v; }
};

struct Plus {
  __device__ __forceinline__ float operator()(float a, float b) const { return a + b; }
};

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
    vec::launch_map(Identity{}, out, {in}, n, stream);
  }
}

template <typename T>
void add_inplace(T* out, const T* a, int64_t n, cudaStream_t stream) {
  vec::launch_map(Plus{}, out, {out, a}, n, stream);
}

template void cast<bf16, float>(bf16*, const float*, int64_t, cudaStream_t);
template void cast<float, bf16>(float*, const bf16*, int64_t, cudaStream_t);
template void cast<float, float>(float*, const float*, int64_t, cudaStream_t);
template void cast<bf16, bf16>(bf16*, const bf16*, int64_t, cudaStream_t);
template void add_inplace<float>(float*, const float*, int64_t, cudaStream_t);
template void add_inplace<bf16>(bf16*, const bf16*, int64_t, cudaStream_t);

}  // namespace kumiko::cuda
