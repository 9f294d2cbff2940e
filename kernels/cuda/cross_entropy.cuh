#pragma once
// Fused softmax + cross-entropy that never stores probabilities: one pass computes
// each row's max and sum of exponentials online, a second writes the loss and
// (backward) the gradient over the logits in place. Math in fp32 for bf16 logits.
#include "kernels/cuda/common.cuh"

namespace kumiko::cuda {

// Whole vocabulary on this rank. losses[n] = lse(logits[n]) - logits[n][targets[n]]
// (fp32, overwritten). With backward, logits[n] is overwritten by
// (softmax(logits[n]) - onehot(targets[n])) * scale.
template <typename T>
void cross_entropy(float* losses, T* logits, const int32_t* targets, int64_t N, int64_t V, bool backward,
                   float scale, cudaStream_t stream);

// Vocabulary-parallel form (tensor parallelism): this rank holds logits columns
// [vocab_begin, vocab_begin + V_local) of the full vocabulary. The last of the three
// steps (the first two, ce_row_max and ce_sums, are in parallel.cuh): with mx[n] the
// row maximum over all ranks, sum[n] = sum of exp(x - mx[n]) over the whole vocabulary
// and target_logit[n] the target's logit (all reduced over the ranks),
// losses[n] = mx[n] + log(sum[n]) - target_logit[n]; with backward, the shard's
// logits become (exp(x - lse[n]) - onehot) * scale.
template <typename T>
void cross_entropy_shard_finish(float* losses, T* logits, const float* mx, const float* sum,
                                const float* target_logit, const int32_t* targets, int64_t N, int64_t V_local,
                                int64_t vocab_begin, bool backward, float scale, cudaStream_t stream);

}  // namespace kumiko::cuda
