#pragma once
// Fused softmax + cross-entropy over logits [N, V] with int32 targets [N] in [0, V):
// losses[n] = logsumexp(logits[n]) - logits[n][targets[n]].
// A target outside [0, V) throws kumiko::UserError.
#include <cstdint>

namespace kumiko::cpu {

template <typename T>
void cross_entropy_forward(T* losses, const T* logits, const int32_t* targets, int64_t N,
                           int64_t V);

// Also writes dlogits[n] = (softmax(logits[n]) - onehot(targets[n])) * dloss_scale
// (overwritten, not accumulated). dlogits may alias logits.
template <typename T>
void cross_entropy_forward_backward(T* losses, T* dlogits, const T* logits, const int32_t* targets,
                                    int64_t N, int64_t V, T dloss_scale);

}  // namespace kumiko::cpu
