#pragma once
// Fused softmax + cross-entropy over logits [N, V] with int32 targets [N] in [0, V):
// losses[n] = logsumexp(logits[n]) - logits[n][targets[n]].
// A target outside [0, V) throws kumiko::UserError.
#include <cstdint>

#include "kumiko/core/bf16.h"

namespace kumiko::cpu {

template <typename T>
void cross_entropy_forward(T* losses, const T* logits, const int32_t* targets, int64_t N,
                           int64_t V);

// Also writes dlogits[n] = (softmax(logits[n]) - onehot(targets[n])) * dloss_scale
// (overwritten, not accumulated). dlogits may alias logits.
template <typename T>
void cross_entropy_forward_backward(T* losses, T* dlogits, const T* logits, const int32_t* targets,
                                    int64_t N, int64_t V, T dloss_scale);

// bf16 logits (backend::CpuBf16), fp32 inside: each row is widened into a per-thread
// fp32 buffer, the loss computed as above, and with `backward` the gradient written
// back over the row, rounded once to bf16. One pass over the bf16 logits instead of
// widening [N, V] to fp32 scratch and narrowing it back; the same results as widen +
// cross_entropy_forward(_backward)<float> + narrow, bit for bit.
void cross_entropy_bf16(float* losses, bf16* logits, const int32_t* targets, int64_t N, int64_t V, bool backward,
                        float dloss_scale);

}  // namespace kumiko::cpu
