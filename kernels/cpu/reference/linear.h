#pragma once
// Scalar reference for linear/matmul (tests only).
#include <cstdint>

namespace kumiko::cpu::reference {

// C[M,N] = alpha * op(A) op(B) + beta * C, row-major.
template <typename T>
void matmul(bool ta, bool tb, int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t lda,
            const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  for (int64_t i = 0; i < M; ++i) {
    for (int64_t j = 0; j < N; ++j) {
      T s = 0;
      for (int64_t k = 0; k < K; ++k) {
        const T a = ta ? A[k * lda + i] : A[i * lda + k];
        const T b = tb ? B[j * ldb + k] : B[k * ldb + j];
        s += a * b;
      }
      C[i * ldc + j] = alpha * s + beta * C[i * ldc + j];
    }
  }
}

template <typename T>
void linear_forward(T* y, const T* x, const T* w, const T* b, int64_t N, int64_t in, int64_t out) {
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t o = 0; o < out; ++o) {
      T s = b ? b[o] : T(0);
      for (int64_t i = 0; i < in; ++i) s += x[n * in + i] * w[o * in + i];
      y[n * out + o] = s;
    }
  }
}

template <typename T>
void linear_backward(T* dx, T* dw, T* db, const T* dy, const T* x, const T* w, int64_t N,
                     int64_t in, int64_t out) {
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t o = 0; o < out; ++o) {
      const T g = dy[n * out + o];
      if (db) db[o] += g;
      for (int64_t i = 0; i < in; ++i) {
        if (dx) dx[n * in + i] += g * w[o * in + i];
        dw[o * in + i] += g * x[n * in + i];
      }
    }
  }
}

}  // namespace kumiko::cpu::reference
