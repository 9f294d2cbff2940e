#pragma once
// Token embedding lookup, learned position embeddings. T is the storage
// type (float, double, bf16); gradients are math_t<T> (fp32 for bf16).
#include <cstdint>

#include "kumiko/core/bf16.h"

namespace kumiko::cpu {

// out[n, :] = table[ids[n], :]  (out [N, C]; ids must index rows of table).
template <typename T>
void embedding_forward(T* out, const int32_t* ids, const T* table, int64_t N, int64_t C);

// dtable[ids[n], :] += dout[n, :], summed in order of n (deterministic for any thread count).
template <typename T>
void embedding_backward(math_t<T>* dtable, const T* dout, const int32_t* ids, int64_t N, int64_t C);

// x[i, :] += pos[(first + i) % T, :] for i < rows: a slice of rows that starts at
// position `first` of sequences of length T (pos [T, C]).
template <typename T>
void add_positions_range(T* x, const T* pos, int64_t first, int64_t rows, int64_t T_, int64_t C);

// out[b, t, :] += pos[t, :]   (out [B, T, C], pos [T, C]).
template <typename T>
void add_positions_forward(T* out, const T* pos, int64_t B, int64_t T_, int64_t C);

// dpos[t, :] += sum_b dout[b, t, :], summed in order of b.
template <typename T>
void add_positions_backward(math_t<T>* dpos, const T* dout, int64_t B, int64_t T_, int64_t C);

}  // namespace kumiko::cpu
