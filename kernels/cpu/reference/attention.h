#pragma once
// Scalar references for rope and causal GQA attention (tests only). Attention keeps
// one full score row per query (plain softmax, no tiling).
#include <cmath>
#include <cstdint>
#include <vector>

namespace kumiko::cpu::reference {

template <typename T>
void rope(T* qkv, int64_t B, int64_t T_, int64_t Hq, int64_t Hkv, int64_t D, double theta,
          bool inverse) {
  const int64_t row = (Hq + 2 * Hkv) * D, half = D / 2;
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t t = 0; t < T_; ++t) {
      for (int64_t h = 0; h < Hq + Hkv; ++h) {
        T* x = qkv + (b * T_ + t) * row + h * D;
        for (int64_t i = 0; i < half; ++i) {
          const double angle = double(t) * std::pow(theta, -2.0 * double(i) / double(D));
          const T c = T(std::cos(angle)), s = T(inverse ? -std::sin(angle) : std::sin(angle));
          const T x0 = x[i], x1 = x[i + half];
          x[i] = x0 * c - x1 * s;
          x[i + half] = x1 * c + x0 * s;
        }
      }
    }
  }
}

template <typename T>
void attention_forward(T* out, T* lse, const T* qkv, int64_t B, int64_t T_, int64_t Hq,
                       int64_t Hkv, int64_t D) {
  const int64_t row = (Hq + 2 * Hkv) * D, group = Hq / Hkv;
  const T scale = T(1) / std::sqrt(T(D));
  std::vector<T> s(static_cast<size_t>(T_));
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h = 0; h < Hq; ++h) {
      const int64_t g = h / group;
      for (int64_t i = 0; i < T_; ++i) {
        const T* q = qkv + (b * T_ + i) * row + h * D;
        T mx = -INFINITY;
        for (int64_t j = 0; j <= i; ++j) {
          const T* k = qkv + (b * T_ + j) * row + (Hq + g) * D;
          T dot = 0;
          for (int64_t d = 0; d < D; ++d) dot += q[d] * k[d];
          s[j] = dot * scale;
          mx = std::max(mx, s[j]);
        }
        T sum = 0;
        for (int64_t j = 0; j <= i; ++j) sum += std::exp(s[j] - mx);
        T* o = out + (b * T_ + i) * Hq * D + h * D;
        for (int64_t d = 0; d < D; ++d) o[d] = 0;
        for (int64_t j = 0; j <= i; ++j) {
          const T p = std::exp(s[j] - mx) / sum;
          const T* v = qkv + (b * T_ + j) * row + (Hq + Hkv + g) * D;
          for (int64_t d = 0; d < D; ++d) o[d] += p * v[d];
        }
        lse[(b * Hq + h) * T_ + i] = mx + std::log(sum);
      }
    }
  }
}

// Plain softmax backward: dS = P (dP - rowsum(P dP)).
template <typename T>
void attention_backward(T* dqkv, const T* dout, const T* qkv, const T* out, const T* lse,
                        int64_t B, int64_t T_, int64_t Hq, int64_t Hkv, int64_t D) {
  const int64_t row = (Hq + 2 * Hkv) * D, group = Hq / Hkv;
  const T scale = T(1) / std::sqrt(T(D));
  std::vector<T> p(static_cast<size_t>(T_)), dp(static_cast<size_t>(T_));
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h = 0; h < Hq; ++h) {
      const int64_t g = h / group;
      for (int64_t i = 0; i < T_; ++i) {
        const T* q = qkv + (b * T_ + i) * row + h * D;
        const T* dO = dout + (b * T_ + i) * Hq * D + h * D;
        T pdp = 0;
        for (int64_t j = 0; j <= i; ++j) {
          const T* k = qkv + (b * T_ + j) * row + (Hq + g) * D;
          const T* v = qkv + (b * T_ + j) * row + (Hq + Hkv + g) * D;
          T dot = 0, dvd = 0;
          for (int64_t d = 0; d < D; ++d) {
            dot += q[d] * k[d];
            dvd += dO[d] * v[d];
          }
          p[j] = std::exp(dot * scale - lse[(b * Hq + h) * T_ + i]);
          dp[j] = dvd;
          pdp += p[j] * dp[j];
        }
        for (int64_t j = 0; j <= i; ++j) {
          const T ds = p[j] * (dp[j] - pdp) * scale;
          const T* k = qkv + (b * T_ + j) * row + (Hq + g) * D;
          T* dq = dqkv + (b * T_ + i) * row + h * D;
          T* dk = dqkv + (b * T_ + j) * row + (Hq + g) * D;
          T* dv = dqkv + (b * T_ + j) * row + (Hq + Hkv + g) * D;
          for (int64_t d = 0; d < D; ++d) {
            dq[d] += ds * k[d];
            dk[d] += ds * q[d];
            dv[d] += p[j] * dO[d];
          }
        }
      }
    }
  }
}

}  // namespace kumiko::cpu::reference
