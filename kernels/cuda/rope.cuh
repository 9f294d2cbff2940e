#pragma once
// Rotary position embedding in place on the q and k heads of a packed qkv buffer
// (kumiko::cpu::rope_*, HF Llama rotate_half convention). The angle t * theta^(-2i/D)
// is computed in double and its cos/sin rounded to float, as on the CPU.
#include "kernels/cuda/common.cuh"

namespace kumiko::cuda {

template <typename T>
void rope_forward(T* qkv, int64_t B, int64_t T_, int64_t Hq, int64_t Hkv, int64_t D, double theta,
                  cudaStream_t stream);
// In place: the inverse rotation of the q and k gradients; v untouched.
template <typename T>
void rope_backward(T* dqkv, int64_t B, int64_t T_, int64_t Hq, int64_t Hkv, int64_t D, double theta,
                   cudaStream_t stream);

}  // namespace kumiko::cuda
