#pragma once
// Kernels the tensor-parallel model needs beyond the single-GPU ops: a vocabulary
// shard's embedding lookup, rows added with a period (replicated biases after a
// row-parallel linear, learned positions of a sequence shard), and Megatron's
// vocabulary-parallel cross-entropy's first two steps around the model's all-reduces
// (the CPU backend's ce_row_max / ce_sums, same maths in fp32).
#include <cstdint>

#include "kernels/cuda/common.cuh"

namespace kumiko::cuda {

// out[n, :] = table[ids[n] - v0, :] for ids in [v0, v0 + V_local), zero rows otherwise.
template <typename T>
void embedding_forward_shard(T* out, const int32_t* ids, const T* table, int64_t N, int64_t C, int64_t v0,
                             int64_t V_local, cudaStream_t stream);
// x[i, :] += src[(first + i) % period, :] for i in [0, rows).
template <typename T>
void add_rows(T* x, const T* src, int64_t first, int64_t rows, int64_t period, int64_t C, cudaStream_t stream);
// mx[n] = max of logits row n [V_local].
template <typename T>
void ce_row_max(float* mx, const T* logits, int64_t N, int64_t V_local, cudaStream_t stream);
// sum[n] = sum exp(x - mx[n]) over the row; tgt[n] = the target's logit if in this shard, else 0.
template <typename T>
void ce_sums(float* sum, float* tgt, const T* logits, const float* mx, const int32_t* targets, int64_t N,
             int64_t V_local, int64_t v0, cudaStream_t stream);
// The third step is cross_entropy_shard_finish (cross_entropy.cuh).

// Decoding one token with a KV cache: RoPE of position `pos` on the q and k heads of
// one qkv row [(Hq + 2Hkv) D] (rope_forward's convention, angles in double on the
// host side's formula), and the token's query heads (q [Hq D]) attending over the
// first `len` cached positions (k, v [len, Hkv D]): out [Hq D].
template <typename T>
void rope_at(T* qkv, int64_t pos, int64_t Hq, int64_t Hkv, int64_t D, double theta, cudaStream_t stream);
template <typename T>
void attention_decode(T* out, const T* q, const T* k, const T* v, int64_t len, int64_t Hq, int64_t Hkv, int64_t D,
                      cudaStream_t stream);

}  // namespace kumiko::cuda
