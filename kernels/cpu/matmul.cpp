// Row-major GEMM through CBLAS (OpenBLAS, OpenMP build: it uses the caller's OpenMP
// thread count and runs single-threaded when called inside a parallel region).
#include "kumiko/ops/matmul.h"

#include <cblas.h>

#include "kumiko/core/error.h"

namespace kumiko::cpu {

namespace {
CBLAS_TRANSPOSE to_cblas(bool trans) { return trans ? CblasTrans : CblasNoTrans; }

void gemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int M, int N, int K, float alpha,
          const float* A, int lda, const float* B, int ldb, float beta, float* C, int ldc) {
  cblas_sgemm(CblasRowMajor, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}
void gemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int M, int N, int K, double alpha,
          const double* A, int lda, const double* B, int ldb, double beta, double* C, int ldc) {
  cblas_dgemm(CblasRowMajor, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}
}  // namespace

template <typename T>
void matmul(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T* A,
            int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  KUMIKO_CHECK(M >= 0 && N >= 0 && K >= 0, "matmul: negative size M=", M, " N=", N, " K=", K);
  KUMIKO_CHECK(M < (int64_t{1} << 31) && N < (int64_t{1} << 31) && K < (int64_t{1} << 31) &&
                   lda < (int64_t{1} << 31) && ldb < (int64_t{1} << 31) &&
                   ldc < (int64_t{1} << 31),
               "matmul: size exceeds the 32-bit BLAS interface");
  if (M == 0 || N == 0) return;
  gemm(to_cblas(trans_a), to_cblas(trans_b), static_cast<int>(M), static_cast<int>(N),
       static_cast<int>(K), alpha, A, static_cast<int>(lda), B, static_cast<int>(ldb), beta, C,
       static_cast<int>(ldc));
}

template void matmul<float>(bool, bool, int64_t, int64_t, int64_t, float, const float*, int64_t,
                            const float*, int64_t, float, float*, int64_t);
template void matmul<double>(bool, bool, int64_t, int64_t, int64_t, double, const double*, int64_t,
                             const double*, int64_t, double, double*, int64_t);

}  // namespace kumiko::cpu
