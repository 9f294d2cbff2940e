#pragma once
// Rotary position embedding (HF Llama "rotate_half" convention), applied in place to
// the q and k heads of a packed qkv buffer [B, T, (Hq + 2*Hkv) * D] (q heads, k heads,
// v heads; v untouched). inv_freq[i] = theta^(-2i/D), i < D/2; angle = t * inv_freq[i];
// x'[i] = x[i] cos - x[i+D/2] sin;  x'[i+D/2] = x[i+D/2] cos + x[i] sin.
// The angles are computed in double and rounded to T (fp32 for T = bf16, whose rotation
// is computed in fp32 and rounded once on store).
#include <cstdint>

namespace kumiko::cpu {

template <typename T>
void rope_forward(T* qkv, int64_t B, int64_t T_, int64_t Hq, int64_t Hkv, int64_t D, double theta);

// In place: the gradient w.r.t. the rotated q, k becomes the gradient w.r.t. the
// unrotated ones (the inverse rotation). v's gradient is untouched.
template <typename T>
void rope_backward(T* dqkv, int64_t B, int64_t T_, int64_t Hq, int64_t Hkv, int64_t D,
                   double theta);

}  // namespace kumiko::cpu
