#pragma once
// Internal helpers shared by the CPU kernels (not a public header): loads and stores of
// kernels templated on their storage type (float, double, bf16), vectorisable exp,
// fused multiply-add, and fixed-size chunking for deterministic reductions.
#include <omp.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <utility>
#include <vector>

#include "kernels/cpu/bf16_convert.h"
#include "kumiko/core/bf16.h"

namespace kumiko::cpu::detail {

// Loads and stores of a kernel templated on its storage type S (math_t<S> arithmetic):
// identities for float and double, so those instantiations are the plain kernels; bf16
// widens exactly on load and rounds to nearest even once on store (bf16_convert.h).
[[gnu::always_inline]] inline float ld(float x) { return x; }
[[gnu::always_inline]] inline double ld(double x) { return x; }
[[gnu::always_inline]] inline float ld(bf16 x) { return widen1(x); }
template <typename S>
[[gnu::always_inline]] inline S st(math_t<S> x) {
  if constexpr (std::is_same_v<S, bf16>)
    return narrow1(x);
  else
    return x;
}

// a * b + c, as one FMA instruction where the ISA has it (vectorises under omp simd).
template <typename T>
[[gnu::always_inline]] inline T fmadd(T a, T b, T c) {
#ifdef __FMA__
  return std::fma(a, b, c);
#else
  return a * b + c;
#endif
}

template <typename T>
struct ExpTraits;
template <>
struct ExpTraits<float> {
  using Bits = uint32_t;
  static constexpr float lo = -87.0f, hi = 88.0f;
  static constexpr float ln2_hi = 0.693359375f, ln2_lo = -2.12194440e-4f;
  static constexpr float magic = 8388608.0f + 127.0f;  // 2^23 + exponent bias
  static constexpr float shifter = 12582912.0f;        // 1.5 * 2^23
  static constexpr int mantissa_bits = 23;
  static constexpr int degree = 7;  // Taylor remainder < 6e-9 on |r| <= ln2/2
};
template <>
struct ExpTraits<double> {
  using Bits = uint64_t;
  static constexpr double lo = -708.0, hi = 709.0;
  static constexpr double ln2_hi = 6.93145751953125e-1, ln2_lo = 1.42860682030941723212e-6;
  static constexpr double magic = 4503599627370496.0 + 1023.0;  // 2^52 + exponent bias
  static constexpr double shifter = 6755399441055744.0;          // 1.5 * 2^52
  static constexpr int mantissa_bits = 52;
  static constexpr int degree = 13;  // Taylor remainder < 5e-18
};

template <typename T, int Degree>
constexpr std::array<T, Degree + 1> taylor_exp_coefficients() {
  std::array<T, Degree + 1> c{};
  c[0] = T(1);
  for (int k = 1; k <= Degree; ++k) c[k] = c[k - 1] / T(k);
  return c;
}

// Taylor polynomial of exp at r, unrolled at compile time (a loop here would keep
// GCC from vectorising the callers).
template <typename T, int Degree, int... K>
[[gnu::always_inline]] inline T horner(T r, std::integer_sequence<int, K...>) {
  constexpr auto coef = taylor_exp_coefficients<T, Degree>();
  T p = coef[Degree];
  ((p = fmadd(p, r, coef[Degree - 1 - K])), ...);
  return p;
}

// exp(x) with branch-free arithmetic that GCC vectorises inside `omp simd` loops
// (libm's exp does not vectorise without -ffast-math). Cody-Waite range reduction
// x = n ln2 + r, Taylor polynomial in r, 2^n built in the exponent bits.
// Accurate to ~2 ulp; exp(x) = 0 for x below the normal range (x = -inf included).
template <typename T>
[[gnu::always_inline]] inline T exp_approx(T x) {
  using E = ExpTraits<T>;
  // Value selects (not std::min/max, which return references) and rounding by the
  // 1.5 * 2^mantissa shifter (not std::floor): both keep the loop vectorisable.
  T xc = x < E::lo ? E::lo : x;
  xc = xc > E::hi ? E::hi : xc;
  const T n = fmadd(xc, T(1.4426950408889634), E::shifter) - E::shifter;  // round(x / ln2)
  const T r = fmadd(-n, E::ln2_lo, fmadd(-n, E::ln2_hi, xc));
  const T p = horner<T, E::degree>(r, std::make_integer_sequence<int, E::degree>());
  // n + magic holds n + bias in its low mantissa bits; shift them into the exponent.
  const auto bits = std::bit_cast<typename E::Bits>(n + E::magic) << E::mantissa_bits;
  const T result = p * std::bit_cast<T>(bits);
  return x < E::lo ? T(0) : result;
}

template <typename T>
[[gnu::always_inline]] inline T sigmoid_approx(T g) {
  return T(1) / (T(1) + exp_approx(-g));
}

// Reductions over a batch dimension are split into a number of chunks that depends
// only on the problem size (never on the thread count), each chunk accumulating its
// own partial, combined in chunk order: results are bitwise identical for any number
// of threads.
struct Chunks {
  int64_t count;  // number of chunks
  int64_t size;   // rows per chunk (the last one may be shorter)
  int64_t begin(int64_t c) const { return c * size; }
  int64_t end(int64_t c, int64_t n) const { return std::min(n, (c + 1) * size); }
};
inline Chunks make_chunks(int64_t n, int64_t max_chunks = 64, int64_t min_rows = 4) {
  if (n <= 0) return {0, 1};
  int64_t count = std::min<int64_t>(max_chunks, std::max<int64_t>(1, n / min_rows));
  const int64_t size = (n + count - 1) / count;
  count = (n + size - 1) / size;
  return {count, size};
}

// A scratch array of at least n elements for the calling thread, kept for its next call
// (a fresh allocation this size would be page-faulted in again on every call). Its
// contents are undefined: every user writes before it reads. One array per type and
// tag; a caller must be done with it before the same thread asks for it again.
template <typename T, int kTag = 0>
T* thread_scratch(size_t n) {
  thread_local std::vector<T> buf;
  if (buf.size() < n) buf.resize(n);
  return buf.data();
}

// out[c] += sum over k of partial[k * stride + c], k = 0, 1, ... in order (the chunk
// order above), for c in [0, C): vectorised across columns, each column's additions in
// the same order as a scalar loop over k, so the result does not change with the
// vector width or the thread count.
template <typename T>
void add_chunk_sums(T* out, const T* partial, int64_t count, int64_t stride, int64_t C) {
  constexpr int64_t kBlock = 64;  // columns per task: 4 AVX-512 vectors
#pragma omp parallel for schedule(static)
  for (int64_t c0 = 0; c0 < C; c0 += kBlock) {
    const int64_t nc = std::min(kBlock, C - c0);
    T acc[kBlock];
    for (int64_t c = 0; c < nc; ++c) acc[c] = T(0);
    for (int64_t k = 0; k < count; ++k) {
      const T* p = partial + k * stride + c0;
#pragma omp simd
      for (int64_t c = 0; c < nc; ++c) acc[c] += p[c];
    }
#pragma omp simd
    for (int64_t c = 0; c < nc; ++c) out[c0 + c] += acc[c];
  }
}

// Column range [c0, c1) of thread `tid` out of `nt` for C columns, aligned to 16.
inline void column_range(int64_t C, int tid, int nt, int64_t& c0, int64_t& c1) {
  const int64_t blocks = (C + 15) / 16;
  c0 = std::min(C, blocks * tid / nt * 16);
  c1 = std::min(C, blocks * (tid + 1) / nt * 16);
}

}  // namespace kumiko::cpu::detail
