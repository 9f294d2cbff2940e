#pragma once
// Causal multi-head attention with grouped-query heads: query head h uses kv head
// h / (Hq / Hkv); scale 1/sqrt(D). Flash formulation (online softmax over key tiles,
// no [T, T] matrix). qkv packed [B, T, (Hq + 2*Hkv) * D] (q heads, k heads, v heads).
#include <cstdint>

#include "kumiko/core/bf16.h"

namespace kumiko::cpu {

// out [B, T, Hq*D] (overwritten); lse [B, Hq, T]: log-sum-exp of each scaled score row.
// T is the storage type (float, double, bf16: fp32 tiles inside, fp32 lse).
template <typename T>
void attention_forward(T* out, math_t<T>* lse, const T* qkv, int64_t B, int64_t T_, int64_t Hq,
                       int64_t Hkv, int64_t D);

// dqkv [B, T, (Hq + 2*Hkv) * D] += gradient w.r.t. qkv; with overwrite, dqkv = the
// gradient (dqkv is not read, so it may hold anything). Recomputes the probabilities
// from lse (flash-attention-2 backward, D_i = rowsum(dout * out)).
template <typename T>
void attention_backward(T* dqkv, const T* dout, const T* qkv, const T* out, const math_t<T>* lse,
                        int64_t B, int64_t T_, int64_t Hq, int64_t Hkv, int64_t D, bool overwrite);

// How attention multiplies its tiles on bf16 storage in this build for head dim D:
// "vdpbf16ps" (AVX512-BF16, even D) or "fp32..." (widened, OpenBLAS).
const char* attention_bf16_tiles(int64_t D);

}  // namespace kumiko::cpu
