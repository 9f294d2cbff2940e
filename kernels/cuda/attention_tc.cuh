#pragma once
// Internal to kernels/cuda (not part of the attention contract): the tensor-core flash
// attention of attention_tc.cu, which attention.cu's bf16 launchers dispatch to, and the
// CUDA-core path of attention.cu kept callable by name so that tests can compare the two.
// Host-includable.
#include <initializer_list>

#include "kernels/cuda/common.cuh"

namespace kumiko::cuda {

// The sizes every attention kernel takes by value, built and checked once by attention.cu.
struct AttentionShape {
  int T;             // sequence length
  int Hq, Hkv;       // query and kv heads
  int hd;            // head dim (the kernels' template D is hd rounded up to 64 or 128)
  int group;         // Hq / Hkv
  int64_t W;         // qkv row stride: (Hq + 2 * Hkv) * hd
  int64_t OW;        // out / dout row stride: Hq * hd
  float scale;       // 1 / sqrt(hd)
  float scale_log2;  // log2(e) / sqrt(hd)
};

// True when the tensor-core kernels can take a bf16 call: D is 64 or 128, the number of
// 64-row tiles fits a grid dimension (T <= 65535 * 64), and every pointer is 16-byte
// aligned (16-byte cp.async loads and stores).
bool attention_tc_supported(int64_t T_, int64_t D, std::initializer_list<const void*> pointers);

// Same semantics as attention_forward<bf16> (attention.cuh). The caller (attention.cu) has
// built and validated the shape and checked attention_tc_supported.
void attention_forward_tc(bf16* out, float* lse, const bf16* qkv, int64_t B, const AttentionShape& s,
                          cudaStream_t stream);

// The dK/dV and dQ passes of attention_backward<bf16>; delta [B, Hq, T] = rowsum(dout * out)
// comes from attention.cu's pre-pass (its workspace). dqkv is overwritten.
void attention_backward_tc(bf16* dqkv, const bf16* dout, const bf16* qkv, const float* lse,
                           const float* delta, int64_t B, const AttentionShape& s, cudaStream_t stream);

// attention.cu's CUDA-core kernels (fp32 math; what float, head dims other than 64 and 128
// and unaligned pointers run on), with the contract of attention.cuh.
template <typename T>
void attention_forward_simt(T* out, float* lse, const T* qkv, int64_t B, int64_t T_, int64_t Hq,
                            int64_t Hkv, int64_t D, cudaStream_t stream);
template <typename T>
void attention_backward_simt(T* dqkv, const T* dout, const T* qkv, const T* out, const float* lse,
                             int64_t B, int64_t T_, int64_t Hq, int64_t Hkv, int64_t D,
                             void* workspace, cudaStream_t stream);

}  // namespace kumiko::cuda
