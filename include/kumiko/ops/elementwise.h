#pragma once
// Elementwise helpers over flat arrays of n elements.
#include <cstdint>

namespace kumiko::cpu {

template <typename T>
void add(T* out, const T* a, const T* b, int64_t n);  // out = a + b (out may alias a or b)
template <typename T>
void add_inplace(T* out, const T* a, int64_t n);  // out += a (also bf16: in fp32, rounded once)
template <typename T>
void scale_inplace(T* x, T s, int64_t n);  // x *= s
// sum of x^2 accumulated in double over fixed-size chunks combined in order:
// bitwise identical for any thread count.
template <typename T>
double sum_squares(const T* x, int64_t n);

}  // namespace kumiko::cpu
