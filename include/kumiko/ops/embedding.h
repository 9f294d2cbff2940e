#pragma once
// Token embedding lookup and learned position embeddings.
#include <cstdint>

namespace kumiko::cpu {

// out[n, :] = table[ids[n], :]  (out [N, C]; ids must index rows of table).
template <typename T>
void embedding_forward(T* out, const int32_t* ids, const T* table, int64_t N, int64_t C);

// dtable[ids[n], :] += dout[n, :], summed in order of n (deterministic for any thread count).
template <typename T>
void embedding_backward(T* dtable, const T* dout, const int32_t* ids, int64_t N, int64_t C);

// out[b, t, :] += pos[t, :]   (out [B, T, C], pos [T, C]).
template <typename T>
void add_positions_forward(T* out, const T* pos, int64_t B, int64_t T_, int64_t C);

// dpos[t, :] += sum_b dout[b, t, :], summed in order of b.
template <typename T>
void add_positions_backward(T* dpos, const T* dout, int64_t B, int64_t T_, int64_t C);

}  // namespace kumiko::cpu
