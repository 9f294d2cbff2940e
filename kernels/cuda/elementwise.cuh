#pragma once
// Casts and the residual additions.
#include "kernels/cuda/common.cuh"

namespace kumiko::cuda {

template <typename Tout, typename Tin>
void cast(Tout* out, const Tin* in, int64_t n, cudaStream_t stream);  // round to nearest even for bf16
template <typename T>
void add_inplace(T* out, const T* a, int64_t n, cudaStream_t stream);  // out += a

}  // namespace kumiko::cuda
