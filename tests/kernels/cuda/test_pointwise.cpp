// CUDA pointwise kernels against kumiko::cpu in double: gelu and swiglu (forward,
// backward accumulating onto random gradients and overwriting poisoned ones, gelu with
// dx aliasing dout), rope (forward, backward, v untouched, backward undoing forward;
// GQA and MHA head layouts, D = 64 and 128, odd T, positions up to 1024), casts
// (round to nearest even, bit for bit against the host's __float2bfloat16_rn, ties,
// overflow and subnormals included) and add_inplace. Sizes 1, 7, 1001 and 2^20 + 3 (vector body plus a scalar tail), each
// also from a start one element off alignment (the element-wise variant).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "kernels/cuda/elementwise.cuh"
#include "kernels/cuda/gelu.cuh"
#include "kernels/cuda/rope.cuh"
#include "kernels/cuda/swiglu.cuh"
#include "kumiko/core/error.h"
#include "kumiko/ops/elementwise.h"
#include "kumiko/ops/gelu.h"
#include "kumiko/ops/rope.h"
#include "kumiko/ops/swiglu.h"
#include "tests/kernels/cpu/test_util.h"
#include "tests/support/gpu_test.h"

namespace kumiko::cuda {
namespace {

using test::as_seen;
using test::bf16_round;
using test::cast_vec;
using test::DeviceBuffer;
using test::expect_bitwise_equal;
using test::expect_close;
using test::OffsetBuffer;
using test::out_tol;
using test::random_vec;

const std::vector<int64_t> kSizes = {1, 7, 1001, (int64_t{1} << 20) + 3};
const std::vector<size_t> kOffsets = {0, 1};

std::string name(const char* op, int64_t n, size_t off) {
  return std::string(op) + " n=" + std::to_string(n) + " off=" + std::to_string(off);
}

// Outputs are checked within out_tol<T>(): fp32, a few roundings of fp32 arithmetic
// (tanhf, expf within a few ulp); bf16, the output rounded once to 8 bits (2^-9 relative).

// ---- gelu --------------------------------------------------------------------------

template <typename T>
void check_gelu(int64_t n, size_t off, uint32_t seed) {
  const size_t un = size_t(n);
  auto x0 = random_vec(un, seed, 3.0);
  if (n >= 7) {
    x0[0] = -30.0f;  // saturated tails
    x0[1] = 30.0f;
  }
  const auto x = as_seen<T>(x0);
  const auto dout = as_seen<T>(random_vec(un, seed + 1));
  const auto dx0 = as_seen<T>(random_vec(un, seed + 2));
  const auto xd = cast_vec<double>(x), doutd = cast_vec<double>(dout);
  const std::string what = name("gelu", n, off);
  OffsetBuffer<T> d_x(x, off), d_dout(dout, off);

  OffsetBuffer<T> d_out(un, off);
  gelu_forward<T>(d_out.get(), d_x.get(), n, cudaStream_t{});
  std::vector<double> out_r(un);
  cpu::gelu_forward<double>(out_r.data(), xd.data(), n);
  expect_close(d_out.download(), out_r, out_tol<T>(), what + " out");

  // Accumulate onto a random dx.
  OffsetBuffer<T> d_dx(dx0, off);
  gelu_backward<T>(d_dx.get(), d_dout.get(), d_x.get(), n, false, cudaStream_t{});
  auto dx_r = cast_vec<double>(dx0);
  cpu::gelu_backward<double>(dx_r.data(), doutd.data(), xd.data(), n, false);
  expect_close(d_dx.download(), dx_r, out_tol<T>(), what + " dx accumulate");

  // Overwrite a poisoned dx: NaN must not leak in.
  std::vector<double> grad_r(un, 0.0);
  cpu::gelu_backward<double>(grad_r.data(), doutd.data(), xd.data(), n, true);
  OffsetBuffer<T> d_fresh(un, off);
  gelu_backward<T>(d_fresh.get(), d_dout.get(), d_x.get(), n, true, cudaStream_t{});
  expect_close(d_fresh.download(), grad_r, out_tol<T>(), what + " dx overwrite");

  // Overwrite in place: dx aliases dout.
  OffsetBuffer<T> d_inplace(dout, off);
  gelu_backward<T>(d_inplace.get(), d_inplace.get(), d_x.get(), n, true, cudaStream_t{});
  expect_close(d_inplace.download(), grad_r, out_tol<T>(), what + " dx overwrite aliasing dout");
}

TEST(CudaGelu, Float) {
  KUMIKO_REQUIRE_GPU();
  for (int64_t n : kSizes)
    for (size_t off : kOffsets) check_gelu<float>(n, off, 700);
}

TEST(CudaGelu, Bf16) {
  KUMIKO_REQUIRE_GPU();
  for (int64_t n : kSizes)
    for (size_t off : kOffsets) check_gelu<bf16>(n, off, 710);
}

// ---- swiglu ------------------------------------------------------------------------

template <typename T>
void check_swiglu(int64_t n, size_t off, uint32_t seed) {
  const size_t un = size_t(n);
  auto gate0 = random_vec(un, seed, 3.0);
  if (n >= 7) {
    gate0[0] = -50.0f;  // sigmoid saturated at both ends
    gate0[1] = 50.0f;
  }
  const auto gate = as_seen<T>(gate0);
  const auto up = as_seen<T>(random_vec(un, seed + 1));
  const auto dout = as_seen<T>(random_vec(un, seed + 2));
  const auto dg0 = as_seen<T>(random_vec(un, seed + 3)), du0 = as_seen<T>(random_vec(un, seed + 4));
  const auto gd = cast_vec<double>(gate), ud = cast_vec<double>(up), doutd = cast_vec<double>(dout);
  const std::string what = name("swiglu", n, off);
  OffsetBuffer<T> d_gate(gate, off), d_up(up, off), d_dout(dout, off);

  OffsetBuffer<T> d_out(un, off);
  swiglu_forward<T>(d_out.get(), d_gate.get(), d_up.get(), n, cudaStream_t{});
  std::vector<double> out_r(un);
  cpu::swiglu_forward<double>(out_r.data(), gd.data(), ud.data(), n);
  expect_close(d_out.download(), out_r, out_tol<T>(), what + " out");

  // Accumulate onto random gradients.
  OffsetBuffer<T> d_dg(dg0, off), d_du(du0, off);
  swiglu_backward<T>(d_dg.get(), d_du.get(), d_dout.get(), d_gate.get(), d_up.get(), n, false,
                     cudaStream_t{});
  auto dg_r = cast_vec<double>(dg0), du_r = cast_vec<double>(du0);
  cpu::swiglu_backward<double>(dg_r.data(), du_r.data(), doutd.data(), gd.data(), ud.data(), n, false);
  expect_close(d_dg.download(), dg_r, out_tol<T>(), what + " dgate accumulate");
  expect_close(d_du.download(), du_r, out_tol<T>(), what + " dup accumulate");

  // Overwrite poisoned gradients.
  OffsetBuffer<T> d_dg2(un, off), d_du2(un, off);
  swiglu_backward<T>(d_dg2.get(), d_du2.get(), d_dout.get(), d_gate.get(), d_up.get(), n, true,
                     cudaStream_t{});
  std::vector<double> dg2_r(un, 0.0), du2_r(un, 0.0);
  cpu::swiglu_backward<double>(dg2_r.data(), du2_r.data(), doutd.data(), gd.data(), ud.data(), n, false);
  expect_close(d_dg2.download(), dg2_r, out_tol<T>(), what + " dgate overwrite");
  expect_close(d_du2.download(), du2_r, out_tol<T>(), what + " dup overwrite");
}

TEST(CudaSwiglu, Float) {
  KUMIKO_REQUIRE_GPU();
  for (int64_t n : kSizes)
    for (size_t off : kOffsets) check_swiglu<float>(n, off, 720);
}

TEST(CudaSwiglu, Bf16) {
  KUMIKO_REQUIRE_GPU();
  for (int64_t n : kSizes)
    for (size_t off : kOffsets) check_swiglu<bf16>(n, off, 730);
}

// ---- rope --------------------------------------------------------------------------

struct RopeShape {
  int64_t B, T, Hq, Hkv, D;
  double theta;
};

template <typename T>
void check_rope(const RopeShape& s, uint32_t seed) {
  const int64_t row = (s.Hq + 2 * s.Hkv) * s.D, rotated = (s.Hq + s.Hkv) * s.D;
  const size_t n = size_t(s.B * s.T * row);
  const std::string what = "rope B=" + std::to_string(s.B) + " T=" + std::to_string(s.T) +
                           " Hq=" + std::to_string(s.Hq) + " Hkv=" + std::to_string(s.Hkv) +
                           " D=" + std::to_string(s.D);
  const auto qkv = as_seen<T>(random_vec(n, seed));
  const auto dqkv = as_seen<T>(random_vec(n, seed + 1));

  // Forward. The reference keeps cos/sin in double; the GPU rounds them to float
  // (relative 6e-8), then one fp32 rotation: far below 1e-5 even at t = 1024,
  // because the angle itself is formed in double.
  DeviceBuffer<T> d_qkv(qkv);
  rope_forward<T>(d_qkv.get(), s.B, s.T, s.Hq, s.Hkv, s.D, s.theta, cudaStream_t{});
  const auto got = d_qkv.download();
  auto ref = cast_vec<double>(qkv);
  cpu::rope_forward<double>(ref.data(), s.B, s.T, s.Hq, s.Hkv, s.D, s.theta);
  expect_close(got, ref, out_tol<T>(), what + " forward");
  size_t v_changed = 0;
  for (size_t i = 0; i < n; ++i)
    v_changed += int64_t(i % size_t(row)) >= rotated && got[i] != qkv[i];
  EXPECT_EQ(v_changed, 0u) << what << ": v heads modified";

  // Backward: the inverse rotation, again leaving v alone.
  DeviceBuffer<T> d_dqkv(dqkv);
  rope_backward<T>(d_dqkv.get(), s.B, s.T, s.Hq, s.Hkv, s.D, s.theta, cudaStream_t{});
  const auto dgot = d_dqkv.download();
  auto dref = cast_vec<double>(dqkv);
  cpu::rope_backward<double>(dref.data(), s.B, s.T, s.Hq, s.Hkv, s.D, s.theta);
  expect_close(dgot, dref, out_tol<T>(), what + " backward");
  for (size_t i = 0; i < n; ++i)
    v_changed += int64_t(i % size_t(row)) >= rotated && dgot[i] != dqkv[i];
  EXPECT_EQ(v_changed, 0u) << what << ": v gradient heads modified";

  // Backward undoes forward (two roundings to T in bf16).
  rope_backward<T>(d_qkv.get(), s.B, s.T, s.Hq, s.Hkv, s.D, s.theta, cudaStream_t{});
  expect_close(d_qkv.download(), cast_vec<double>(qkv), 2 * out_tol<T>(),
               what + " backward(forward(x))");
}

const std::vector<RopeShape>& rope_shapes() {
  static const std::vector<RopeShape> s = {
      {2, 7, 4, 2, 64, 10000.0},      // GQA, odd T
      {1, 33, 6, 2, 128, 10000.0},    // GQA 3:1, D = 128
      {2, 5, 3, 3, 64, 10000.0},      // MHA
      {1, 1025, 2, 1, 64, 500000.0},  // long: positions up to 1024, Llama-3 theta
      {1, 9, 1, 1, 2, 10000.0},       // D = 2: one pair per head
  };
  return s;
}

TEST(CudaRope, Float) {
  KUMIKO_REQUIRE_GPU();
  uint32_t seed = 740;
  for (const RopeShape& s : rope_shapes()) check_rope<float>(s, seed += 2);
}

TEST(CudaRope, Bf16) {
  KUMIKO_REQUIRE_GPU();
  uint32_t seed = 760;
  for (const RopeShape& s : rope_shapes()) check_rope<bf16>(s, seed += 2);
}

TEST(CudaRope, RejectsOddHeadDim) {  // checked on the host before any launch: no GPU needed
  EXPECT_THROW(rope_forward<float>(nullptr, 1, 2, 1, 1, 3, 10000.0, cudaStream_t{}), kumiko::Error);
}

// ---- casts -------------------------------------------------------------------------

uint32_t bits_of(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  return u;
}
float from_bits(uint32_t u) {
  float x;
  std::memcpy(&x, &u, sizeof x);
  return x;
}

// Random values with the hard cases of rounding to bf16 in front (when n allows).
std::vector<float> cast_inputs(int64_t n, uint32_t seed) {
  auto v = random_vec(size_t(n), seed, 100.0);
  const std::vector<float> special = {
      from_bits(0x3F808000u),  // 1 + 2^-8: a tie, rounds down to the even 1.0
      from_bits(0x3F818000u),  // a tie rounding up to the even 0x3F82
      from_bits(0xBF808000u),  // negative tie
      from_bits(0x3F808001u),  // just above a tie: rounds up
      from_bits(0x3F807FFFu),  // just below a tie: rounds down
      from_bits(0x7F7FFFFFu),  // FLT_MAX: rounds up to +inf
      from_bits(0x7F7F7FFFu),  // largest value that stays finite
      1e-40f,                  // subnormal
      -3e-39f,                 // subnormal, negative
      from_bits(0x00008000u),  // subnormal tie: rounds to +0
      -0.0f,
      0.0f,
  };
  if (v.size() >= special.size()) std::copy(special.begin(), special.end(), v.begin());
  return v;
}

void expect_same_bits(const std::vector<float>& got, const std::vector<float>& want,
                      const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  size_t bad = 0, first = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (bits_of(got[i]) != bits_of(want[i]) && bad++ == 0) first = i;
  }
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " elements differ; first at " << first << ": got "
                     << got[first] << " want " << want[first];
}

TEST(CudaCast, FloatToBf16RoundsToNearestEven) {
  KUMIKO_REQUIRE_GPU();
  for (int64_t n : kSizes) {
    for (size_t off : kOffsets) {
      const auto in = cast_inputs(n, 800);
      std::vector<float> want(in.size());
      for (size_t i = 0; i < in.size(); ++i) want[i] = __bfloat162float(__float2bfloat16_rn(in[i]));
      OffsetBuffer<float> d_in(in, off);
      OffsetBuffer<bf16> d_out(size_t(n), off);
      cast<bf16, float>(d_out.get(), d_in.get(), n, cudaStream_t{});
      expect_same_bits(d_out.download(), want, name("cast float->bf16", n, off));
    }
  }
}

TEST(CudaCast, Bf16ToFloatAndCopiesAreExact) {
  KUMIKO_REQUIRE_GPU();
  for (int64_t n : kSizes) {
    for (size_t off : kOffsets) {
      const auto in_f = cast_inputs(n, 810);
      const auto in_b = bf16_round(in_f);
      OffsetBuffer<bf16> d_b(in_b, off), d_bb(size_t(n), off);
      OffsetBuffer<float> d_f(in_f, off), d_bf(size_t(n), off), d_ff(size_t(n), off);
      cast<float, bf16>(d_bf.get(), d_b.get(), n, cudaStream_t{});
      cast<float, float>(d_ff.get(), d_f.get(), n, cudaStream_t{});
      cast<bf16, bf16>(d_bb.get(), d_b.get(), n, cudaStream_t{});
      expect_same_bits(d_bf.download(), in_b, name("cast bf16->float", n, off));
      expect_same_bits(d_ff.download(), in_f, name("cast float->float", n, off));
      expect_same_bits(d_bb.download(), in_b, name("cast bf16->bf16", n, off));
    }
  }
}

// ---- add_inplace (the residual additions) ---------------------------------------------

// One fp32 addition rounded once to T: 1e-6 covers fp32 (half an ulp is 6e-8).
template <typename T>
constexpr double add_tol() {
  return std::is_same_v<T, bf16> ? 1e-2 : 1e-6;
}

template <typename T>
void check_add_inplace(int64_t n, size_t off, uint32_t seed) {
  const size_t un = size_t(n);
  const auto a = as_seen<T>(random_vec(un, seed)), c0 = as_seen<T>(random_vec(un, seed + 2));
  OffsetBuffer<T> d_a(a, off), d_c(c0, off);
  add_inplace<T>(d_c.get(), d_a.get(), n, cudaStream_t{});
  auto c_r = cast_vec<double>(c0);
  const auto ad = cast_vec<double>(a);
  cpu::add_inplace<double>(c_r.data(), ad.data(), n);
  expect_close(d_c.download(), c_r, add_tol<T>(), name("add_inplace", n, off));
}

TEST(CudaElementwise, AddInplaceFloat) {
  KUMIKO_REQUIRE_GPU();
  for (int64_t n : kSizes)
    for (size_t off : kOffsets) check_add_inplace<float>(n, off, 820);
}

TEST(CudaElementwise, AddInplaceBf16) {
  KUMIKO_REQUIRE_GPU();
  for (int64_t n : kSizes)
    for (size_t off : kOffsets) check_add_inplace<bf16>(n, off, 830);
}

}  // namespace
}  // namespace kumiko::cuda
