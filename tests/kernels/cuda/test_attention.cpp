// Causal GQA attention on the GPU: kumiko's flash kernels (kernels/cuda/attention.cu, float
// and bf16) and the cuDNN path (CudnnAttention, bf16) against kumiko::cpu::attention_* in
// double on the same inputs (rounded to bf16 where the GPU sees bf16). The backward gets
// the reference out (rounded to the element type) and lse (rounded to float) as inputs, so
// it is checked on its own; it must overwrite the NaN-poisoned dqkv and be deterministic.
// T covers one row, a partial tile, exact tiles and a partial last tile (tiles are 64).
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <initializer_list>
#include <iostream>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "gpu_test.h"
#include "kernels/cuda/attention.cuh"
#include "kernels/cuda/attention_tc.cuh"
#include "kernels/cuda/cudnn_attention.cuh"
#include "kumiko/core/error.h"
#include "kumiko/ops/attention.h"
#include "test_util.h"

namespace kumiko::cuda {
namespace {

using test::cast_vec;
using test::DeviceBuffer;
using test::DeviceBytes;
using test::expect_bitwise_equal;
using test::expect_close;
using test::random_vec;

struct Shape {
  int64_t B, T, Hq, Hkv, D;
  size_t qkv() const { return size_t(B * T * (Hq + 2 * Hkv) * D); }
  size_t out() const { return size_t(B * T * Hq * D); }
  size_t lse() const { return size_t(B * Hq * T); }
  std::string tag() const {
    return " (B=" + std::to_string(B) + " T=" + std::to_string(T) + " Hq=" + std::to_string(Hq) +
           " Hkv=" + std::to_string(Hkv) + " D=" + std::to_string(D) + ")";
  }
};

// Inputs and double references for one shape.
struct Case {
  std::vector<float> qkv, dout;          // as the GPU sees them
  std::vector<double> out_ref, lse_ref;  // forward reference
  std::vector<float> out_in, lse_in;     // backward inputs: out rounded to T, lse to float
  std::vector<double> dqkv_ref;          // backward reference (from zero: the CPU op accumulates)
};

template <typename T>
Case make_case(const Shape& s, uint32_t seed) {
  Case c;
  c.qkv = test::as_seen<T>(random_vec(s.qkv(), seed));
  c.dout = test::as_seen<T>(random_vec(s.out(), seed + 1));
  const auto qkvd = cast_vec<double>(c.qkv);
  c.out_ref.resize(s.out());
  c.lse_ref.resize(s.lse());
  cpu::attention_forward<double>(c.out_ref.data(), c.lse_ref.data(), qkvd.data(), s.B, s.T, s.Hq,
                                 s.Hkv, s.D);
  c.out_in = test::as_seen<T>(cast_vec<float>(c.out_ref));
  c.lse_in = cast_vec<float>(c.lse_ref);
  c.dqkv_ref.assign(s.qkv(), 0.0);
  cpu::attention_backward<double>(c.dqkv_ref.data(), cast_vec<double>(c.dout).data(), qkvd.data(),
                                  cast_vec<double>(c.out_in).data(),
                                  cast_vec<double>(c.lse_in).data(), s.B, s.T, s.Hq, s.Hkv, s.D,
                                  /*overwrite=*/true);
  return c;
}

struct Tolerance {
  double out, lse, grad;
};
// float: fp32 sums of up to D products (scores) and T * Hq/Hkv terms (gradients); the
// gradients also go through dP - delta, a difference of similar numbers, hence the looser
// bound. bf16: outputs are rounded to bf16 (2^-9 relative); lse stays fp32.
template <typename T>
Tolerance kernel_tolerance() {
  if constexpr (std::is_same_v<T, bf16>) return {1e-2, 2e-5, 1e-2};
  return {2e-5, 2e-5, 5e-5};
}

template <typename T>
void check_kernels(const Shape& s, uint32_t seed) {
  const Case c = make_case<T>(s, seed);
  const Tolerance tol = kernel_tolerance<T>();
  const std::string type = std::is_same_v<T, bf16> ? " bf16" : " float";

  DeviceBuffer<T> qkv(c.qkv), out(s.out());
  DeviceBuffer<float> lse(s.lse());
  attention_forward<T>(out.get(), lse.get(), qkv.get(), s.B, s.T, s.Hq, s.Hkv, s.D, nullptr);
  expect_close(out.download(), c.out_ref, tol.out, "attention out" + type + s.tag());
  expect_close(lse.download(), c.lse_ref, tol.lse, "attention lse" + type + s.tag());

  DeviceBuffer<T> dout(c.dout), out_in(c.out_in), dqkv(s.qkv());
  DeviceBuffer<float> lse_in(c.lse_in);
  DeviceBytes workspace(attention_backward_workspace_bytes(s.B, s.T, s.Hq, s.Hkv, s.D));
  auto backward = [&] {
    dqkv.poison();
    attention_backward<T>(dqkv.get(), dout.get(), qkv.get(), out_in.get(), lse_in.get(), s.B, s.T,
                          s.Hq, s.Hkv, s.D, workspace.get(), nullptr);
    return dqkv.download();
  };
  const auto first = backward();
  expect_close(first, c.dqkv_ref, tol.grad, "attention dqkv" + type + s.tag());
  expect_bitwise_equal(backward(), first, "attention dqkv" + type + s.tag());
}

template <typename T>
void check_kernel_grid(uint32_t seed) {
  for (int64_t D : {64, 128})
    for (auto [Hq, Hkv] :
         std::initializer_list<std::pair<int64_t, int64_t>>{{2, 2}, {4, 2}, {8, 1}})
      for (int64_t T_ : {1, 37, 64, 130, 256})
        for (int64_t B : {1, 2}) check_kernels<T>({B, T_, Hq, Hkv, D}, seed += 3);
}

TEST(CudaAttention, FloatMatchesCpu) {
  KUMIKO_REQUIRE_GPU();
  check_kernel_grid<float>(1000);
}

TEST(CudaAttention, Bf16MatchesCpu) {
  KUMIKO_REQUIRE_GPU();
  check_kernel_grid<bf16>(2000);
}

// Head dims other than 64 and 128 run on the next larger instantiation, masked.
TEST(CudaAttention, OtherHeadDimsMatchCpu) {
  KUMIKO_REQUIRE_GPU();
  for (const Shape& s : {Shape{1, 130, 4, 2, 96}, Shape{2, 37, 2, 1, 32}, Shape{1, 70, 2, 2, 8},
                         Shape{1, 65, 3, 1, 120}}) {
    check_kernels<float>(s, 3000);
    check_kernels<bf16>(s, 3100);
  }
}

// The shape checks come before any CUDA call: this runs without a GPU too.
TEST(CudaAttention, RejectsUnsupportedShapes) {
  EXPECT_THROW(attention_forward<float>(nullptr, nullptr, nullptr, 1, 8, 4, 2, 100, nullptr),
               Error);  // D % 8
  EXPECT_THROW(attention_forward<float>(nullptr, nullptr, nullptr, 1, 8, 4, 2, 136, nullptr),
               Error);  // D > 128
  EXPECT_THROW(attention_forward<float>(nullptr, nullptr, nullptr, 1, 8, 4, 3, 64, nullptr),
               Error);  // Hq % Hkv
}

// bf16 calls with D = 64 or 128 and 16-byte aligned pointers run on the tensor-core kernels
// (attention_tc.cu); the CUDA-core kernels stay reachable as attention_*_simt. On a larger
// case (5 query tiles, the last one partial; GQA) both paths must match the double reference
// and each other, the tensor-core backward must be deterministic, and unaligned pointers must
// fall back to the CUDA-core kernels (bitwise the results of attention_*_simt).
TEST(CudaAttention, TensorCoresMatchCudaCores) {
  KUMIKO_REQUIRE_GPU();
  const Tolerance tol = kernel_tolerance<bf16>();
  uint32_t seed = 6000;
  for (int64_t D : {64, 128}) {
    const Shape s{2, 300, 4, 2, D};
    const Case c = make_case<bf16>(s, seed += 3);
    const std::string tag = s.tag();

    DeviceBuffer<bf16> qkv(c.qkv), out_tc(s.out()), out_simt(s.out());
    DeviceBuffer<float> lse_tc(s.lse()), lse_simt(s.lse());
    EXPECT_TRUE(attention_tc_supported(s.T, s.D, {qkv.get(), out_tc.get()})) << tag;
    EXPECT_FALSE(attention_tc_supported(s.T, 96, {qkv.get(), out_tc.get()})) << tag;
    attention_forward<bf16>(out_tc.get(), lse_tc.get(), qkv.get(), s.B, s.T, s.Hq, s.Hkv, s.D,
                            nullptr);
    attention_forward_simt<bf16>(out_simt.get(), lse_simt.get(), qkv.get(), s.B, s.T, s.Hq, s.Hkv,
                                 s.D, nullptr);
    const auto out_a = out_tc.download(), out_b = out_simt.download();
    const auto lse_a = lse_tc.download(), lse_b = lse_simt.download();
    expect_close(out_a, c.out_ref, tol.out, "tensor-core out" + tag);
    expect_close(lse_a, c.lse_ref, tol.lse, "tensor-core lse" + tag);
    expect_close(out_b, c.out_ref, tol.out, "cuda-core out" + tag);
    expect_close(lse_b, c.lse_ref, tol.lse, "cuda-core lse" + tag);
    // Both round nearly the same fp32 value to bf16: at most one bf16 ulp (2^-7) apart.
    expect_close(out_a, out_b, 1e-2, "tensor-core vs cuda-core out" + tag);
    expect_close(lse_a, lse_b, tol.lse, "tensor-core vs cuda-core lse" + tag);

    DeviceBuffer<bf16> dout(c.dout), out_in(c.out_in), dqkv(s.qkv());
    DeviceBuffer<float> lse_in(c.lse_in);
    DeviceBytes workspace(attention_backward_workspace_bytes(s.B, s.T, s.Hq, s.Hkv, s.D));
    auto backward = [&](bool simt) {
      dqkv.poison();
      if (simt)
        attention_backward_simt<bf16>(dqkv.get(), dout.get(), qkv.get(), out_in.get(), lse_in.get(),
                                      s.B, s.T, s.Hq, s.Hkv, s.D, workspace.get(), nullptr);
      else
        attention_backward<bf16>(dqkv.get(), dout.get(), qkv.get(), out_in.get(), lse_in.get(), s.B,
                                 s.T, s.Hq, s.Hkv, s.D, workspace.get(), nullptr);
      return dqkv.download();
    };
    const auto grad_a = backward(false), grad_b = backward(true);
    expect_close(grad_a, c.dqkv_ref, tol.grad, "tensor-core dqkv" + tag);
    expect_close(grad_b, c.dqkv_ref, tol.grad, "cuda-core dqkv" + tag);
    expect_close(grad_a, grad_b, 1e-2, "tensor-core vs cuda-core dqkv" + tag);
    expect_bitwise_equal(backward(false), grad_a, "tensor-core dqkv" + tag);

    // The same data one element (2 bytes) into its buffers: not 16-byte aligned.
    std::vector<float> shifted(1, 0.5f);
    shifted.insert(shifted.end(), c.qkv.begin(), c.qkv.end());
    DeviceBuffer<bf16> qkv_u(shifted), out_u(s.out() + 1), dqkv_u(s.qkv() + 1);
    EXPECT_FALSE(attention_tc_supported(s.T, s.D, {qkv_u.get() + 1, out_u.get() + 1})) << tag;
    attention_forward<bf16>(out_u.get() + 1, lse_tc.get(), qkv_u.get() + 1, s.B, s.T, s.Hq, s.Hkv,
                            s.D, nullptr);
    auto out_c = out_u.download();
    out_c.erase(out_c.begin());
    expect_bitwise_equal(out_c, out_b, "unaligned out" + tag);
    attention_backward<bf16>(dqkv_u.get() + 1, dout.get(), qkv_u.get() + 1, out_in.get(),
                             lse_in.get(), s.B, s.T, s.Hq, s.Hkv, s.D, workspace.get(), nullptr);
    auto grad_c = dqkv_u.download();
    grad_c.erase(grad_c.begin());
    expect_bitwise_equal(grad_c, grad_b, "unaligned dqkv" + tag);
  }
}

// ||got - ref|| / ||ref|| within rtol (the error of the tensor as a whole).
template <typename A>
void expect_rms_close(const std::vector<A>& got, const std::vector<double>& ref, double rtol,
                      const std::string& what) {
  ASSERT_EQ(got.size(), ref.size()) << what;
  double err = 0, norm = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double d = double(got[i]) - ref[i];
    err += d * d;
    norm += ref[i] * ref[i];
  }
  const double rel = std::sqrt(err / norm);
  EXPECT_LE(rel, rtol) << what << ": relative rms error " << rel;
  std::printf("[ NOTE     ] %s: relative rms error %.2e\n", what.c_str(), rel);
}

// cuDNN's bf16 kernels round P and dS to bf16 before their matrix products (on top of the
// bf16 outputs), so the bounds are wider than for kumiko's fp32-math kernels; lse is fp32.
void check_cudnn(CudnnAttention& att, const Shape& s, uint32_t seed) {
  const Case c = make_case<bf16>(s, seed);
  DeviceBytes workspace(att.workspace_bytes(s.B, s.T, s.Hq, s.Hkv, s.D));

  DeviceBuffer<bf16> qkv(c.qkv), out(s.out());
  DeviceBuffer<float> lse(s.lse());
  att.forward(out.get(), lse.get(), qkv.get(), s.B, s.T, s.Hq, s.Hkv, s.D, workspace.get(),
              nullptr);
  expect_close(out.download(), c.out_ref, 2e-2, "cudnn out" + s.tag());
  expect_close(lse.download(), c.lse_ref, 1e-3, "cudnn lse" + s.tag());

  DeviceBuffer<bf16> dout(c.dout), out_in(c.out_in), dqkv(s.qkv());
  DeviceBuffer<float> lse_in(c.lse_in);
  auto backward = [&] {
    dqkv.poison();
    att.backward(dqkv.get(), dout.get(), qkv.get(), out_in.get(), lse_in.get(), s.B, s.T, s.Hq,
                 s.Hkv, s.D, workspace.get(), nullptr);
    return dqkv.download();
  };
  const auto first = backward();
  // Each gradient sums T products of bf16-rounded P and dS: the rounding errors add up
  // like a random walk, so over ~10^6 elements a few land past 3e-2 of |ref| + rms (the
  // H200 run saw up to 4.8e-2 in 1-4 elements). Element-wise the bound is 1e-1 (an
  // indexing error is O(1)); over the whole tensor the error must stay at bf16's scale.
  expect_close(first, c.dqkv_ref, 1e-1, "cudnn dqkv" + s.tag());
  expect_rms_close(first, c.dqkv_ref, 1e-2, "cudnn dqkv" + s.tag());
  expect_bitwise_equal(backward(), first, "cudnn dqkv" + s.tag());
}

// Shapes cuDNN must support (T a multiple of 64, D 64 or 128, GQA included).
TEST(CudnnAttention, MatchesCpu) {
  KUMIKO_REQUIRE_GPU();
  CudnnAttention att;
  uint32_t seed = 4000;
  for (const Shape& s :
       {Shape{1, 256, 4, 4, 64}, Shape{2, 256, 4, 2, 128}, Shape{1, 256, 8, 1, 64},
        Shape{2, 256, 8, 1, 128}, Shape{1, 1024, 4, 2, 64}, Shape{1, 1024, 4, 2, 128}}) {
    try {
      check_cudnn(att, s, seed += 3);
    } catch (const Error& e) {
      ADD_FAILURE() << "cuDNN attention failed on" << s.tag() << ": " << e.what();
    }
  }
}

// Lengths that are not a multiple of 64: checked where this cuDNN builds a graph for them.
TEST(CudnnAttention, OddLengthsWhereSupported) {
  KUMIKO_REQUIRE_GPU();
  CudnnAttention att;
  uint32_t seed = 5000;
  std::string unsupported;
  int checked = 0;
  for (const Shape& s : {Shape{1, 1, 4, 2, 64}, Shape{2, 37, 4, 2, 64}, Shape{1, 130, 8, 1, 128}}) {
    try {
      att.workspace_bytes(s.B, s.T, s.Hq, s.Hkv, s.D);
    } catch (const Error& e) {
      unsupported += std::string("\n  ") + e.what();
      continue;
    }
    check_cudnn(att, s, seed += 3);
    ++checked;
  }
  if (!unsupported.empty()) {
    std::cout << "[ NOTE     ] cuDNN does not support these shapes:" << unsupported << "\n";
    if (checked == 0)
      GTEST_SKIP() << "SKIP: cuDNN supports none of the odd lengths:" << unsupported;
  }
}

}  // namespace
}  // namespace kumiko::cuda
