#pragma once
// Row-major GEMM through CBLAS: C[M,N] = alpha * op(A) op(B) + beta * C, where
// op(A) is [M,K] (A stored [K,M] when trans_a) and op(B) is [K,N] (B stored [N,K]
// when trans_b). Instantiated for float and double.
#include <cstdint>

namespace kumiko::cpu {

template <typename T>
void matmul(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T* A,
            int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc);

}  // namespace kumiko::cpu
