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
// (overwritten, not accumulated). dlogits may alias logits. The softmax is exp(x - max)
// kept from the sum, times dloss_scale / sum: one exp per element, and the arithmetic
// of the vocabulary-parallel loss's finish below.
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

// The vocabulary-parallel loss (tp > 1) in three passes over this rank's columns
// logits[N, Vl] = the full logits' [v0, v0 + Vl); between them the caller takes the
// max of mx and the sums of sum and tgt over the tensor-parallel group. Vectorised
// with the same exp as the loss above. Logits in fp32 or bf16 (backend::CpuBf16, read
// as they are; the bf16 finish widens each row into a per-thread buffer and narrows the
// gradient back: the fp32 kernels' results on the widened logits, bit for bit, except
// the row sums, whose order follows each instantiation's vectorisation).
//   ce_shard_max:    mx[n] = max of the row;
//   ce_shard_sums:   sum[n] = sum of exp(row - mx[n]); tgt[n] = the target's logit
//                    where this rank holds it, else 0;
//   ce_shard_finish: losses[n] = log(sum[n]) + mx[n] - tgt[n]; with `backward` the row
//                    overwritten by (softmax - onehot) * scale.
template <typename S>
void ce_shard_max(float* mx, const S* logits, int64_t N, int64_t Vl);
template <typename S>
void ce_shard_sums(float* sum, float* tgt, const S* logits, const float* mx, const int32_t* targets, int64_t N,
                   int64_t Vl, int64_t v0);
void ce_shard_finish(float* losses, float* logits, const float* mx, const float* sum, const float* tgt,
                     const int32_t* targets, int64_t N, int64_t Vl, int64_t v0, bool backward, float scale);
void ce_shard_finish(float* losses, bf16* logits, const float* mx, const float* sum, const float* tgt,
                     const int32_t* targets, int64_t N, int64_t Vl, int64_t v0, bool backward, float scale);

}  // namespace kumiko::cpu
