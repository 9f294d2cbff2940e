// CUDA fused cross-entropy against kumiko::cpu::cross_entropy_forward_backward in double:
// losses and in-place dlogits for V in {50, 4096 (vector path), 50257 (element path)},
// N in {1, 37}, float and bf16 logits, moderate (std 4) and large (std 30) logits; the
// forward-only call leaves the logits untouched; the vocabulary-parallel pair over three
// uneven shards, combined on the host, reproduces the unsplit result.
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "kernels/cuda/cross_entropy.cuh"
#include "kernels/cuda/parallel.cuh"
#include "kumiko/ops/cross_entropy.h"
#include "tests/kernels/cpu/test_util.h"
#include "tests/support/gpu_test.h"

namespace kumiko::cuda {
namespace {

using test::as_seen;
using test::cast_vec;
using test::DeviceBuffer;
using test::DeviceIds;
using test::out_tol;
using test::random_ids;
using test::random_vec;

constexpr float kScale = 0.25f;

struct Problem {
  int64_t N, V;
  std::vector<float> logits;  // as the GPU sees them (bf16-rounded for bf16)
  std::vector<int32_t> targets;
  std::vector<double> losses, dlogits, lse;  // double reference
};

template <typename T>
Problem make_problem(int64_t N, int64_t V, double stddev, uint32_t seed) {
  Problem p{N, V, as_seen<T>(random_vec(size_t(N * V), seed, stddev)), random_ids(size_t(N), int32_t(V), seed + 1),
            {}, {}, {}};
  p.losses.resize(static_cast<size_t>(N));
  p.dlogits.resize(size_t(N * V));
  cpu::cross_entropy_forward_backward<double>(p.losses.data(), p.dlogits.data(), cast_vec<double>(p.logits).data(),
                                              p.targets.data(), N, V, double(kScale));
  p.lse.resize(static_cast<size_t>(N));
  for (int64_t n = 0; n < N; ++n) {
    p.lse[size_t(n)] = p.losses[size_t(n)] + double(p.logits[size_t(n * V + p.targets[size_t(n)])]);
  }
  return p;
}

// Error model of the fp32 computation. lse (magnitude up to max|x| + log V) and
// x - lse are fp32 values rounded to half an ulp, i.e. an absolute error of about
// (|lse| + |x|) * 2^-24 in the exponent, which becomes that relative error of
// p = exp(x - lse); expf adds ~2 ulp. With logits of std 30 this absolute error is
// far above 1e-5 relative for p - 1 near p = 1 (a cancellation the double reference does
// not have), so the bound is per element: 8x the first-order estimate, plus the output
// rounding (out_rtol: fp32 or bf16) and an absolute floor for underflowed exp.
void expect_losses_close(const std::vector<float>& got, const Problem& p, const std::string& what) {
  ASSERT_EQ(got.size(), size_t(p.N)) << what;
  for (int64_t n = 0; n < p.N; ++n) {
    const double x_t = p.logits[size_t(n * p.V + p.targets[size_t(n)])];
    const double ref = p.losses[size_t(n)];
    const double bound = 1e-5 * std::abs(ref) + (std::abs(p.lse[size_t(n)]) + std::abs(x_t) + 1.0) * 0x1p-20;
    EXPECT_LE(std::abs(double(got[size_t(n)]) - ref), bound) << what << " loss row " << n << ": got "
                                                             << got[size_t(n)] << " want " << ref;
  }
}

void expect_dlogits_close(const std::vector<float>& got, const Problem& p, double out_rtol, const std::string& what) {
  ASSERT_EQ(got.size(), p.dlogits.size()) << what;
  size_t bad = 0, worst_i = 0;
  double worst = 0;
  for (int64_t n = 0; n < p.N; ++n) {
    const double lse = p.lse[size_t(n)];
    for (int64_t v = 0; v < p.V; ++v) {
      const size_t i = size_t(n * p.V + v);
      const double ref = p.dlogits[i];
      const double prob = ref / double(kScale) + (v == p.targets[size_t(n)] ? 1.0 : 0.0);
      const double bound = out_rtol * std::abs(ref) +
                           double(kScale) * (prob * (std::abs(lse) + std::abs(double(p.logits[i])) + 1.0) * 0x1p-20 + 1e-37);
      const double ratio = std::abs(double(got[i]) - ref) / bound;
      if (!(ratio <= 1.0)) {
        ++bad;
        if (!(ratio <= worst)) {
          worst = ratio;
          worst_i = i;
        }
      }
    }
  }
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " of " << got.size() << " dlogits off; worst at " << worst_i
                     << ": got " << got[worst_i] << " want " << p.dlogits[worst_i] << " (" << worst
                     << " x the bound)";
}

template <typename T>
void check_full(int64_t N, int64_t V, double stddev) {
  const std::string what = "cross_entropy N=" + std::to_string(N) + " V=" + std::to_string(V) +
                           " std=" + std::to_string(int(stddev));
  const Problem p = make_problem<T>(N, V, stddev, uint32_t(300 + V + N));
  DeviceIds d_targets(p.targets);
  {  // forward only: losses, logits untouched
    DeviceBuffer<T> d_logits(p.logits);
    DeviceBuffer<float> d_losses(static_cast<size_t>(N));
    cross_entropy<T>(d_losses.get(), d_logits.get(), d_targets.get(), N, V, false, kScale, cudaStream_t{});
    expect_losses_close(d_losses.download(), p, what + " forward");
    test::expect_bitwise_equal(d_logits.download(), p.logits, what + " forward leaves logits");
  }
  DeviceBuffer<T> d_logits(p.logits);
  DeviceBuffer<float> d_losses(static_cast<size_t>(N));
  cross_entropy<T>(d_losses.get(), d_logits.get(), d_targets.get(), N, V, true, kScale, cudaStream_t{});
  expect_losses_close(d_losses.download(), p, what);
  expect_dlogits_close(d_logits.download(), p, out_tol<T>(), what);
}

template <typename T>
void check_all_full() {
  for (int64_t V : {50, 4096, 50257}) {
    for (int64_t N : {1, 37}) {
      for (double stddev : {4.0, 30.0}) check_full<T>(N, V, stddev);
    }
  }
}

TEST(CudaCrossEntropy, Float) {
  KUMIKO_REQUIRE_GPU();
  check_all_full<float>();
}

TEST(CudaCrossEntropy, Bf16) {
  KUMIKO_REQUIRE_GPU();
  check_all_full<bf16>();
}

// Three uneven shards (V/4, V/2, rest: multiples of 8 for V = 4096, so the vector path
// runs there); per-shard stats combined on the host in double, as ranks would.
template <typename T>
void check_sharded(int64_t N, int64_t V, double stddev) {
  const std::string what = "sharded cross_entropy N=" + std::to_string(N) + " V=" + std::to_string(V) +
                           " std=" + std::to_string(int(stddev));
  const Problem p = make_problem<T>(N, V, stddev, uint32_t(400 + V + N));
  const std::vector<int64_t> begin = {0, V / 4, V / 4 + V / 2, V};
  const size_t shards = begin.size() - 1;
  DeviceIds d_targets(p.targets);
  std::vector<DeviceBuffer<T>> d_logits;
  d_logits.reserve(shards);
  for (size_t k = 0; k < shards; ++k) {
    const int64_t b = begin[k], Vk = begin[k + 1] - b;
    std::vector<float> slice(size_t(N * Vk));
    for (int64_t n = 0; n < N; ++n) {
      std::copy_n(p.logits.begin() + n * V + b, Vk, slice.begin() + n * Vk);
    }
    d_logits.emplace_back(slice);
  }
  // The tensor-parallel model's three steps (kernels/cuda/parallel.cuh), with the
  // all-reduces between them done on the host as the ranks would: the row maxima
  // (then their max), the sums of exponentials and target logits (then their sums).
  std::vector<float> mx(static_cast<size_t>(N), -INFINITY);
  for (size_t k = 0; k < shards; ++k) {
    const int64_t Vk = begin[k + 1] - begin[k];
    DeviceBuffer<float> d_mx(static_cast<size_t>(N));
    ce_row_max<T>(d_mx.get(), d_logits[k].get(), N, Vk, cudaStream_t{});
    const auto part = d_mx.download();
    for (int64_t n = 0; n < N; ++n) mx[size_t(n)] = std::max(mx[size_t(n)], part[size_t(n)]);
  }
  DeviceBuffer<float> d_mx(mx);
  std::vector<double> sum(static_cast<size_t>(N), 0.0), tgt(static_cast<size_t>(N), 0.0);
  for (size_t k = 0; k < shards; ++k) {
    const int64_t b = begin[k], Vk = begin[k + 1] - b;
    DeviceBuffer<float> d_sum(static_cast<size_t>(N)), d_tgt(static_cast<size_t>(N));
    ce_sums<T>(d_sum.get(), d_tgt.get(), d_logits[k].get(), d_mx.get(), d_targets.get(), N, Vk, b, cudaStream_t{});
    const auto s_k = d_sum.download(), t_k = d_tgt.download();
    for (int64_t n = 0; n < N; ++n) {
      const int32_t tn = p.targets[size_t(n)];
      const bool owner = tn >= begin[k] && tn < begin[k + 1];
      EXPECT_EQ(t_k[size_t(n)], owner ? p.logits[size_t(n * V + tn)] : 0.0f) << what << " target logit row " << n;
      sum[size_t(n)] += s_k[size_t(n)];
      tgt[size_t(n)] += t_k[size_t(n)];
    }
  }
  DeviceBuffer<float> d_sum(std::vector<float>(sum.begin(), sum.end())),
      d_target(std::vector<float>(tgt.begin(), tgt.end()));
  std::vector<float> dlogits(size_t(N * V));
  for (size_t k = 0; k < shards; ++k) {
    const int64_t b = begin[k], Vk = begin[k + 1] - b;
    DeviceBuffer<float> d_losses(static_cast<size_t>(N));
    if (k == 0) {  // forward only: losses, shard untouched
      const auto before = d_logits[k].download();
      cross_entropy_shard_finish<T>(d_losses.get(), d_logits[k].get(), d_mx.get(), d_sum.get(), d_target.get(), d_targets.get(), N, Vk, b,
                   false, kScale, cudaStream_t{});
      expect_losses_close(d_losses.download(), p, what + " forward");
      test::expect_bitwise_equal(d_logits[k].download(), before, what + " forward leaves logits");
      d_losses.poison();
    }
    cross_entropy_shard_finish<T>(d_losses.get(), d_logits[k].get(), d_mx.get(), d_sum.get(), d_target.get(), d_targets.get(), N, Vk, b,
                 true, kScale, cudaStream_t{});
    expect_losses_close(d_losses.download(), p, what + " shard " + std::to_string(k));
    const auto shard = d_logits[k].download();
    for (int64_t n = 0; n < N; ++n) {
      std::copy_n(shard.begin() + n * Vk, Vk, dlogits.begin() + n * V + b);
    }
  }
  expect_dlogits_close(dlogits, p, out_tol<T>(), what);
}

template <typename T>
void check_all_sharded() {
  for (int64_t V : {50, 4096, 50257}) {
    for (int64_t N : {1, 37}) {
      for (double stddev : {4.0, 30.0}) check_sharded<T>(N, V, stddev);
    }
  }
}

TEST(CudaCrossEntropy, ShardedFloat) {
  KUMIKO_REQUIRE_GPU();
  check_all_sharded<float>();
}

TEST(CudaCrossEntropy, ShardedBf16) {
  KUMIKO_REQUIRE_GPU();
  check_all_sharded<bf16>();
}

}  // namespace
}  // namespace kumiko::cuda
