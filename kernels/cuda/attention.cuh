#pragma once
// Flash attention (Dao et al. 2022; FlashAttention-2 backward): causal, grouped-query
// heads (query head h reads kv head h / (Hq / Hkv)), scale 1/sqrt(D), online softmax
// over key tiles, no [T, T] matrix in memory. Head dims 64 and 128 (any D <= 128 that
// is a multiple of 8 works). qkv packed [B, T, (Hq + 2*Hkv) * D] (q, k, v heads), the
// same layout as kumiko::cpu::attention_forward.
#include "kernels/cuda/common.cuh"

namespace kumiko::cuda {

// out [B, T, Hq*D] overwritten; lse [B, Hq, T] fp32 log-sum-exp of each scaled row.
template <typename T>
void attention_forward(T* out, float* lse, const T* qkv, int64_t B, int64_t T_, int64_t Hq, int64_t Hkv,
                       int64_t D, cudaStream_t stream);

size_t attention_backward_workspace_bytes(int64_t B, int64_t T_, int64_t Hq, int64_t Hkv, int64_t D);
// dqkv [B, T, (Hq + 2*Hkv) * D] is OVERWRITTEN (unlike the CPU op, which accumulates):
// the model writes the gradient of a fresh qkv buffer. Deterministic: dK/dV and dQ
// come from separate passes, each summing in a fixed order.
template <typename T>
void attention_backward(T* dqkv, const T* dout, const T* qkv, const T* out, const float* lse, int64_t B,
                        int64_t T_, int64_t Hq, int64_t Hkv, int64_t D, void* workspace, cudaStream_t stream);

}  // namespace kumiko::cuda
