#pragma once
// Scalar references for cross-entropy, embedding, positions and AdamW (tests only).
#include <cmath>
#include <cstdint>

namespace kumiko::cpu::reference {

template <typename T>
void cross_entropy(T* losses, T* dlogits, const T* logits, const int32_t* targets, int64_t N,
                   int64_t V, T scale) {
  for (int64_t n = 0; n < N; ++n) {
    const T* r = logits + n * V;
    T mx = r[0];
    for (int64_t v = 1; v < V; ++v) mx = std::max(mx, r[v]);
    T sum = 0;
    for (int64_t v = 0; v < V; ++v) sum += std::exp(r[v] - mx);
    const T lse = mx + std::log(sum);
    losses[n] = lse - r[targets[n]];
    if (dlogits) {
      for (int64_t v = 0; v < V; ++v) {
        dlogits[n * V + v] = (std::exp(r[v] - lse) - (v == targets[n] ? T(1) : T(0))) * scale;
      }
    }
  }
}

template <typename T>
void embedding_forward(T* out, const int32_t* ids, const T* table, int64_t N, int64_t C) {
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c) out[n * C + c] = table[ids[n] * C + c];
}

template <typename T>
void embedding_backward(T* dtable, const T* dout, const int32_t* ids, int64_t N, int64_t C) {
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c) dtable[ids[n] * C + c] += dout[n * C + c];
}

template <typename T>
void adamw_update(T* p, const T* grad, T* m, T* v, int64_t n, double lr, double b1, double b2,
                  double eps, double wd, double gs, int64_t step) {
  for (int64_t i = 0; i < n; ++i) {
    const double g = double(grad[i]) * gs;
    double pi = double(p[i]) * (1.0 - lr * wd);
    const double mi = b1 * double(m[i]) + (1.0 - b1) * g;
    const double vi = b2 * double(v[i]) + (1.0 - b2) * g * g;
    const double mhat = mi / (1.0 - std::pow(b1, double(step)));
    const double vhat = vi / (1.0 - std::pow(b2, double(step)));
    pi -= lr * mhat / (std::sqrt(vhat) + eps);
    p[i] = T(pi);
    m[i] = T(mi);
    v[i] = T(vi);
  }
}

}  // namespace kumiko::cpu::reference
