#pragma once
// Token and learned position embeddings (kumiko::cpu::embedding_*, add_positions_*).
#include <vector>

#include "kernels/cuda/common.cuh"

namespace kumiko::cuda {

// out[n, :] = table[ids[n], :] (+ pos[n % T_, :] when pos is not null). ids on device.
template <typename T>
void embedding_forward(T* out, const int32_t* ids, const T* table, const T* pos, int64_t N, int64_t T_,
                       int64_t C, cudaStream_t stream);

// Deterministic embedding backward without atomics: the host groups the positions by
// token (it has the token ids before they are uploaded), the kernel sums each token's
// rows in position order. Layout of one int32 array (upload it as one buffer):
//   [0]                 U, the number of distinct tokens
//   [1, 1+U)            the distinct token ids
//   [1+U, 2+2U)         offsets into the position list, U + 1 of them
//   [2+2U, 2+2U+N)      positions n grouped by token, ascending within a token
std::vector<int32_t> embedding_groups(const int32_t* ids, int64_t N);
// dtable[id, :] += sum of dout[n, :] over the positions n of id. `groups` on device
// (from embedding_groups); `max_unique` bounds U (grid size; N is always enough).
template <typename T>
void embedding_backward(float* dtable, const T* dout, const int32_t* groups, int64_t max_unique, int64_t C,
                        cudaStream_t stream);
// dpos[t, :] += sum over b of dout[b, t, :], in order of b.
template <typename T>
void add_positions_backward(float* dpos, const T* dout, int64_t B, int64_t T_, int64_t C, cudaStream_t stream);

}  // namespace kumiko::cuda
