#pragma once
// Scalar references for layernorm and rmsnorm (tests only).
#include <cmath>
#include <cstdint>

namespace kumiko::cpu::reference {

template <typename T>
void layernorm_forward(T* out, T* mean, T* rstd, const T* x, const T* w, const T* b, int64_t N,
                       int64_t C, T eps) {
  for (int64_t n = 0; n < N; ++n) {
    const T* xr = x + n * C;
    T m = 0;
    for (int64_t c = 0; c < C; ++c) m += xr[c];
    m /= T(C);
    T var = 0;
    for (int64_t c = 0; c < C; ++c) var += (xr[c] - m) * (xr[c] - m);
    var /= T(C);
    const T s = T(1) / std::sqrt(var + eps);
    for (int64_t c = 0; c < C; ++c) out[n * C + c] = (xr[c] - m) * s * w[c] + b[c];
    mean[n] = m;
    rstd[n] = s;
  }
}

template <typename T>
void layernorm_backward(T* dx, T* dw, T* db, const T* dout, const T* x, const T* w, const T* mean,
                        const T* rstd, int64_t N, int64_t C) {
  for (int64_t n = 0; n < N; ++n) {
    const T* xr = x + n * C;
    const T* g = dout + n * C;
    T a = 0, bsum = 0;
    for (int64_t c = 0; c < C; ++c) {
      const T xhat = (xr[c] - mean[n]) * rstd[n];
      a += g[c] * w[c];
      bsum += g[c] * w[c] * xhat;
    }
    a /= T(C);
    bsum /= T(C);
    for (int64_t c = 0; c < C; ++c) {
      const T xhat = (xr[c] - mean[n]) * rstd[n];
      dx[n * C + c] += (g[c] * w[c] - a - xhat * bsum) * rstd[n];
      dw[c] += g[c] * xhat;
      db[c] += g[c];
    }
  }
}

template <typename T>
void rmsnorm_forward(T* out, T* rstd, const T* x, const T* w, int64_t N, int64_t C, T eps) {
  for (int64_t n = 0; n < N; ++n) {
    T ms = 0;
    for (int64_t c = 0; c < C; ++c) ms += x[n * C + c] * x[n * C + c];
    const T s = T(1) / std::sqrt(ms / T(C) + eps);
    for (int64_t c = 0; c < C; ++c) out[n * C + c] = x[n * C + c] * s * w[c];
    rstd[n] = s;
  }
}

template <typename T>
void rmsnorm_backward(T* dx, T* dw, const T* dout, const T* x, const T* w, const T* rstd, int64_t N,
                      int64_t C) {
  for (int64_t n = 0; n < N; ++n) {
    const T s = rstd[n];
    T dot = 0;
    for (int64_t c = 0; c < C; ++c) dot += dout[n * C + c] * w[c] * x[n * C + c];
    for (int64_t c = 0; c < C; ++c) {
      dx[n * C + c] += dout[n * C + c] * w[c] * s - x[n * C + c] * s * s * s * dot / T(C);
      dw[c] += dout[n * C + c] * x[n * C + c] * s;
    }
  }
}

}  // namespace kumiko::cpu::reference
