// CUDA optimizer kernels: multi-tensor AdamW over tensors of odd sizes (1: tail only,
// 1001: vectors plus a tail, 70000: vectors, and 70000 viewed one element off its
// allocation: the unaligned element path), with and without weight decay and bf16
// copies, several steps, against kumiko::cpu::adamw_update in double; the sum of
// squares against a double host sum, aligned and unaligned, and its determinism.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/cuda/adamw.cuh"
#include "kernels/cuda/norm.cuh"
#include "kumiko/ops/adamw.h"
#include "tests/kernels/cpu/test_util.h"
#include "tests/support/gpu_test.h"

namespace kumiko::cuda {
namespace {

using test::bf16_round;
using test::cast_vec;
using test::DeviceBuffer;
using test::DeviceBytes;
using test::expect_close;
using test::random_vec;

struct HostTensor {
  int64_t n;
  int64_t offset;  // elements between the allocation and the view (1: unaligned)
  float weight_decay;
  bool with_bf16;
  std::vector<double> p, m, v;  // reference state
  float guard = 0;              // the element before an offset view, never touched
};

TEST(CudaAdamW, MultiTensorMatchesCpu) {
  KUMIKO_REQUIRE_GPU();
  std::vector<HostTensor> ts = {{1, 0, 0.1f, false, {}, {}, {}, 0},
                                {1001, 0, 0.0f, true, {}, {}, {}, 0},
                                {70000, 0, 0.1f, true, {}, {}, {}, 0},
                                {70000, 1, 0.05f, true, {}, {}, {}, 0}};
  const int count = int(ts.size());
  std::vector<DeviceBuffer<float>> p, g, m, v;
  std::vector<DeviceBuffer<bf16>> pb;
  std::vector<AdamWTensor> desc;
  int64_t max_n = 0;
  for (int k = 0; k < count; ++k) {
    HostTensor& t = ts[size_t(k)];
    const size_t alloc = size_t(t.n + t.offset);
    const auto p0 = random_vec(alloc, 500 + uint32_t(k));
    const auto m0 = random_vec(alloc, 510 + uint32_t(k), 0.1);
    auto v0 = random_vec(alloc, 520 + uint32_t(k), 0.1);
    for (auto& x : v0) x = x * x;  // second moments are non-negative
    t.p.assign(p0.begin() + t.offset, p0.end());
    t.m.assign(m0.begin() + t.offset, m0.end());
    t.v.assign(v0.begin() + t.offset, v0.end());
    t.guard = p0[0];
    p.emplace_back(p0);
    m.emplace_back(m0);
    v.emplace_back(v0);
    g.emplace_back(alloc);
    pb.emplace_back(t.with_bf16 ? alloc : 0);
    AdamWTensor d;
    d.param = p.back().get() + t.offset;
    d.param_bf16 = t.with_bf16 ? pb.back().get() + t.offset : nullptr;
    d.grad = g.back().get() + t.offset;
    d.m = m.back().get() + t.offset;
    d.v = v.back().get() + t.offset;
    d.n = t.n;
    d.weight_decay = t.weight_decay;
    desc.push_back(d);
    max_n = std::max(max_n, t.n);
  }
  DeviceBytes d_desc(sizeof(AdamWTensor) * desc.size());
  KUMIKO_CUDA_CHECK(cudaMemcpy(d_desc.get(), desc.data(), sizeof(AdamWTensor) * desc.size(), cudaMemcpyHostToDevice));

  AdamWStep step;
  step.lr = 1e-3f;
  step.beta1 = 0.9f;
  step.beta2 = 0.95f;
  step.eps = 1e-8f;
  step.grad_scale = 0.5f;
  for (int64_t s = 1; s <= 4; ++s) {
    step.bias_correction1 = float(1.0 - std::pow(double(step.beta1), double(s)));
    step.bias_correction2 = float(1.0 - std::pow(double(step.beta2), double(s)));
    for (int k = 0; k < count; ++k) {
      HostTensor& t = ts[size_t(k)];
      const auto grad = random_vec(size_t(t.n + t.offset), 600 + uint32_t(10 * s + k));
      g[size_t(k)].upload(grad);
      // The reference gets the hyperparameters exactly as the GPU sees them (floats).
      cpu::adamw_update<double>(t.p.data(), cast_vec<double>(grad).data() + t.offset, t.m.data(), t.v.data(), t.n,
                                double(step.lr), double(step.beta1), double(step.beta2), double(step.eps),
                                double(t.weight_decay), double(step.grad_scale), s);
    }
    adamw_multi_tensor(static_cast<const AdamWTensor*>(d_desc.get()), count, max_n, step, cudaStream_t{});
  }
  for (int k = 0; k < count; ++k) {
    const HostTensor& t = ts[size_t(k)];
    const std::string what = "adamw tensor " + std::to_string(k) + " (n=" + std::to_string(t.n) + ")";
    auto view = [&](const std::vector<float>& all) { return std::vector<float>(all.begin() + t.offset, all.end()); };
    const auto gp = view(p[size_t(k)].download());
    // fp32 state over 4 steps: a few roundings of 2^-24 per step.
    expect_close(gp, t.p, 2e-6, what + " param");
    expect_close(view(m[size_t(k)].download()), t.m, 2e-6, what + " m");
    expect_close(view(v[size_t(k)].download()), t.v, 2e-6, what + " v");
    if (t.with_bf16) {
      // The working copy is the fp32 master rounded to nearest: exactly.
      test::expect_bitwise_equal(view(pb[size_t(k)].download()), bf16_round(gp), what + " bf16 copy");
    }
    if (t.offset) {  // the element before the view is left alone
      EXPECT_EQ(p[size_t(k)].download()[0], t.guard) << what;
    }
  }
}

double host_sum_squares(const std::vector<float>& x, size_t from) {
  double s = 0;
  for (size_t i = from; i < x.size(); ++i) s += double(x[i]) * double(x[i]);
  return s;
}

double run_sum_squares(const float* x, int64_t n) {
  DeviceBytes ws(sum_squares_workspace_bytes(n)), out(sizeof(double));
  sum_squares(static_cast<double*>(out.get()), x, n, ws.get(), cudaStream_t{});
  double result = 0;
  KUMIKO_CUDA_CHECK(cudaMemcpy(&result, out.get(), sizeof(double), cudaMemcpyDeviceToHost));
  return result;
}

TEST(CudaSumSquares, MatchesHostAndIsDeterministic) {
  KUMIKO_REQUIRE_GPU();
  for (int64_t n : {int64_t{1}, int64_t{1000}, int64_t{1000007}}) {
    for (int64_t offset : {0, 1}) {  // 1: unaligned start, element path
      const auto x = random_vec(size_t(n + offset), 700 + uint32_t(n));
      DeviceBuffer<float> d_x(x);
      const double got = run_sum_squares(d_x.get() + offset, n);
      const double ref = host_sum_squares(x, size_t(offset));
      // Exact squares summed in double, in a different order: ~n * 2^-53 relative.
      EXPECT_NEAR(got, ref, 1e-12 * ref) << "sum_squares n=" << n << " offset=" << offset;
      const double again = run_sum_squares(d_x.get() + offset, n);
      EXPECT_EQ(std::memcmp(&got, &again, sizeof(double)), 0) << "sum_squares not deterministic, n=" << n;
    }
  }
}

}  // namespace
}  // namespace kumiko::cuda
