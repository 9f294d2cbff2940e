#pragma once
// Casts and the residual additions.
#include "kernels/cuda/common.cuh"

namespace kumiko::cuda {

template <typename Tout, typename Tin>
void cast(Tout* out, const Tin* in, int64_t n, cudaStream_t stream);  // round to nearest even for bf16
template <typename T>
void add(T* out, const T* a, const T* b, int64_t n, cudaStream_t stream);  // out = a + b (aliasing allowed)
template <typename T>
void add_inplace(T* out, const T* a, int64_t n, cudaStream_t stream);      // out += a
void scale_inplace(float* x, float s, int64_t n, cudaStream_t stream);     // x *= s
// Fills with a NaN bit pattern (tests poison outputs; the arena poisons in debug runs).
void poison(void* p, size_t bytes, cudaStream_t stream);

}  // namespace kumiko::cuda
