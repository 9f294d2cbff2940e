#pragma once
// Scalar references for gelu and swiglu (tests only).
#include <cmath>
#include <cstdint>

namespace kumiko::cpu::reference {

template <typename T>
void gelu_forward(T* out, const T* x, int64_t n) {
  const T a = T(0.7978845608028654);
  for (int64_t i = 0; i < n; ++i) {
    out[i] = T(0.5) * x[i] * (T(1) + std::tanh(a * (x[i] + T(0.044715) * x[i] * x[i] * x[i])));
  }
}

template <typename T>
void gelu_backward(T* dx, const T* dout, const T* x, int64_t n) {
  const T a = T(0.7978845608028654), c = T(0.044715);
  for (int64_t i = 0; i < n; ++i) {
    const T th = std::tanh(a * (x[i] + c * x[i] * x[i] * x[i]));
    const T d = T(0.5) * (T(1) + th) +
                T(0.5) * x[i] * (T(1) - th * th) * a * (T(1) + T(3) * c * x[i] * x[i]);
    dx[i] += dout[i] * d;
  }
}

template <typename T>
void swiglu_forward(T* out, const T* gate, const T* up, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = gate[i] / (T(1) + std::exp(-gate[i])) * up[i];
}

template <typename T>
void swiglu_backward(T* dgate, T* dup, const T* dout, const T* gate, const T* up, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const T sg = T(1) / (T(1) + std::exp(-gate[i]));
    dgate[i] += dout[i] * up[i] * (sg + gate[i] * sg * (T(1) - sg));
    dup[i] += dout[i] * gate[i] * sg;
  }
}

}  // namespace kumiko::cpu::reference
