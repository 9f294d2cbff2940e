// zero_grads() on the CPU backends marks the gradients unwritten instead of zeroing
// them (backend kLazyGradZero): each gradient's first write of a step either
// overwrites it (the weight-gradient GEMMs, beta = 0) or zeroes it before
// accumulating. After a step, every parameter's gradient is filled with NaN,
// zero_grads() is called and two micro-batches run: no NaN may survive (a writer that
// accumulated onto the stale values would carry one), and the losses and gradients
// must equal, bit for bit, those of a second model on the same weights that ran the
// same steps without the NaNs. (Both take the same GEMM paths, beta = 0 first: equal on
// any BLAS. That beta = 0 gives the bits of zeroing first and beta = 1 was checked on
// whole training runs, docs/performance.md, not here: a library may block a GEMM
// differently with and without its sum.) fp32 (backend::Cpu<float>) and bf16
// (backend::CpuBf16, each bf16 GEMM available), gpt2 with tied embeddings (the head
// GEMM writes the embedding's gradient first, the embedding backward adds to it)
// and llama. settle_grads() after zero_grads() with no backward leaves every gradient zero.
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "kumiko/backend/cpu_bf16.h"
#include "kumiko/core/rng.h"
#include "kumiko/model/transformer.h"
#include "kumiko/ops/matmul_bf16.h"
#include "kumiko_test_support.h"

namespace kumiko::model {
namespace {

std::vector<int32_t> tokens(int64_t n, int64_t V, uint64_t seed) {
  std::vector<int32_t> t;
  for (int64_t i = 0; i < n; ++i) t.push_back(static_cast<int32_t>(rng::philox(seed, 0, i)[0] % V));
  return t;
}

// Two micro-batches of [B, T] after zero_grads(); returns the summed loss and the
// gradients (host copy).
template <typename Backend>
double two_micro_batches(BasicTransformer<Backend>& m, int64_t B, int64_t T, std::vector<float>& grads) {
  const int64_t V = m.dims().V, N = B * T;
  const auto a = tokens(N, V, 1), b = tokens(N, V, 2), c = tokens(N, V, 3);
  m.zero_grads();
  const double loss =
      m.forward_backward(a.data(), b.data(), B, T, 0.5) + m.forward_backward(b.data(), c.data(), B, T, 0.5);
  m.download_grads();
  const auto& g = m.params().flat_grads();
  grads.assign(g.data(), g.data() + g.numel());
  return loss;
}

template <typename Backend>
void stale_gradients_do_not_leak(bool llama, Backend* be, const std::string& what) {
  SCOPED_TRACE(what + (llama ? " llama" : " gpt2 tied"));
  const Dims d = testing::small_dims(llama, 2);
  const int64_t B = 2, T = 16;
  BasicTransformer<Backend> m(d, B, T, {}, {}, be);
  m.params().initialize(3);
  m.upload_parameters();
  std::vector<float> first;
  m.zero_grads();                        // the first call zeroes the whole buffer (CpuBf16's constructor made it)
  two_micro_batches(m, B, T, first);     // a step with the lazy zeroing
  // Stale values: every parameter's gradient NaN (the backend's own memory).
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (int i = 0; i < static_cast<int>(m.params().size()); ++i) {
    const std::vector<float> poison(static_cast<size_t>(m.params().numel(i)), nan);
    be->from_host(m.flat_grads() + m.offset(i), poison.data(), m.params().numel(i));
  }
  std::vector<float> got, want;
  const double loss = two_micro_batches(m, B, T, got);

  BasicTransformer<Backend> fresh(d, B, T, {}, {}, be);
  m.download_parameters();
  std::copy_n(m.params().flat_values().data(), m.flat_size(), fresh.params().flat_values().data());
  fresh.upload_parameters();
  fresh.zero_grads();
  two_micro_batches(fresh, B, T, want);  // the same steps, without the NaNs
  const double want_loss = two_micro_batches(fresh, B, T, want);
  EXPECT_EQ(loss, want_loss);
  ASSERT_EQ(got.size(), want.size());
  size_t nans = 0, differ = 0;
  double norm = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    nans += std::isnan(got[i]);
    differ += std::memcmp(&got[i], &want[i], sizeof(float)) != 0;
    norm += static_cast<double>(want[i]) * want[i];
  }
  EXPECT_EQ(nans, 0u) << "a stale (NaN) gradient was accumulated onto";
  EXPECT_EQ(differ, 0u) << "gradients differ from the same steps run without stale NaNs";
  EXPECT_GT(norm, 0.0);
  // Every parameter has a gradient: none was zeroed after its GEMM wrote it.
  for (int i = 0; i < static_cast<int>(m.params().size()); ++i) {
    double ss = 0;
    for (int64_t k = 0; k < m.params().numel(i); ++k) ss += std::pow(static_cast<double>(got[m.offset(i) + k]), 2);
    EXPECT_GT(ss, 0.0) << m.params().spec(i).name;
  }
}

// A step whose backward writes no gradient (settle_grads() right after zero_grads(),
// what a pipeline stage or the engine's poison path relies on) leaves every gradient
// exactly zero, not the previous step's values.
template <typename Backend>
void settle_zeroes_unwritten(Backend* be, const std::string& what) {
  SCOPED_TRACE(what);
  const Dims d = testing::small_dims(false, 2);
  const int64_t B = 2, T = 16;
  BasicTransformer<Backend> m(d, B, T, {}, {}, be);
  m.params().initialize(5);
  m.upload_parameters();
  std::vector<float> g;
  m.zero_grads();
  two_micro_batches(m, B, T, g);
  double before = 0;
  for (const float x : g) before += static_cast<double>(x) * x;
  ASSERT_GT(before, 0.0);
  m.zero_grads();
  m.settle_grads();
  m.download_grads();
  const auto& flat = m.params().flat_grads();
  for (int i = 0; i < static_cast<int>(m.params().size()); ++i) {
    int64_t nonzero = 0;
    for (int64_t k = 0; k < m.params().numel(i); ++k) nonzero += flat.data()[m.offset(i) + k] != 0.0f;
    EXPECT_EQ(nonzero, 0) << m.params().spec(i).name << ": settle_grads() left the previous step's gradient";
  }
}

TEST(GradZeroing, SettleZeroesUnwrittenGradients) {
  backend::Cpu<float> fp32;
  settle_zeroes_unwritten(&fp32, "fp32");
  backend::CpuBf16 bf16(cpu::bf16_gemms_available().front());
  settle_zeroes_unwritten(&bf16, "bf16");
}

TEST(GradZeroing, StaleGradientsDoNotLeakFp32) {
  for (const bool llama : {false, true}) {
    backend::Cpu<float> be;
    stale_gradients_do_not_leak(llama, &be, "fp32");
  }
}

TEST(GradZeroing, StaleGradientsDoNotLeakBf16) {
  ASSERT_FALSE(cpu::bf16_gemms_available().empty());
  for (auto gemm : cpu::bf16_gemms_available())
    for (const bool llama : {false, true}) {
      backend::CpuBf16 be(gemm);
      stale_gradients_do_not_leak(llama, &be, std::string("bf16 ") + cpu::bf16_gemm_name(gemm));
    }
}

}  // namespace
}  // namespace kumiko::model
