#pragma once
// Fully connected layer with PyTorch's weight layout W[out, in].
#include <cstdint>

#include "kumiko/core/bf16.h"

namespace kumiko::cpu {

// y[N, out] = x[N, in] · W[out, in]^T (+ b[out]); b may be nullptr. y is overwritten.
template <typename T>
void linear_forward(T* y, const T* x, const T* w, const T* b, int64_t N, int64_t in, int64_t out);

// Accumulates: dx[N, in] += dy·W (dx may be nullptr), dw[out, in] += dy^T·x,
// db[out] += sum_n dy[n] (db may be nullptr). With accumulate_dx / accumulate_dw false
// that product overwrites dx / dw instead (the GEMM's beta = 0: the same bits as
// zeroing first, without the pass over the output).
template <typename T>
void linear_backward(T* dx, T* dw, T* db, const T* dy, const T* x, const T* w, int64_t N,
                     int64_t in, int64_t out, bool accumulate_dx = true, bool accumulate_dw = true);

// db[c] += sum_n dy[n, c] (dy [N, C] of float, double or bf16; db in math_t<T>), rows
// summed in order, columns split between threads: the same bits for any thread count.
template <typename T>
void bias_backward(math_t<T>* db, const T* dy, int64_t N, int64_t C);

}  // namespace kumiko::cpu
