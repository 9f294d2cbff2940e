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
// [vocab_begin, vocab_begin + V_local) of the full vocabulary.
// Step 1: per row, stats[n] = {max, sum exp(x - max), target logit or 0}.
template <typename T>
void cross_entropy_shard_stats(float* stats /*[N, 3]*/, const T* logits, const int32_t* targets, int64_t N,
                               int64_t V_local, int64_t vocab_begin, cudaStream_t stream);
// Step 2 (after the caller combines the ranks' stats into the global log-sum-exp
// lse[n] and target logit): losses[n] = lse[n] - target[n]; with backward, the shard's
// logits become (exp(x - lse[n]) - onehot) * scale.
template <typename T>
void cross_entropy_shard_finish(float* losses, T* logits, const float* lse, const float* target_logit,
                                const int32_t* targets, int64_t N, int64_t V_local, int64_t vocab_begin,
                                bool backward, float scale, cudaStream_t stream);

}  // namespace kumiko::cuda
