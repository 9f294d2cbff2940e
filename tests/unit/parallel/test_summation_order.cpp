// Splitting a step's batch into different micro-batches (as dp = 4 x micro_batch 1
// against one process x micro_batch 2 does) changes only the order in which the
// gradient is summed. This test shows it: the same 12 AdamW steps with gradient
// clipping, the batch split 4 x 1 and 2 x 2, through the one model and the one
// data-parallel layer. In double precision the two runs agree to ~1e-13 (no logic
// difference); in float they differ by rounding only: 1.6e-8 to 1.8e-7 relative
// under OpenBLAS's Haswell, SkylakeX, Zen and Sandybridge kernels, bounded here by
// the layout tests' 1e-5.
#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include <gtest/gtest.h>

#include "kumiko/comm/communicator.h"
#include "kumiko/model/transformer.h"
#include "kumiko/parallel/data_parallel.h"

namespace kumiko::parallel {
namespace {

model::Dims dims() {
  model::Dims d;
  d.L = 2;
  d.Hq = 4;
  d.Hkv = 4;
  d.D = 8;
  d.C = 32;
  d.F = 128;
  d.V = 97;
  d.max_T = 16;
  d.init_std = 0.2;
  return d;
}

// Losses of 12 steps of a batch of 4 sequences split into micro-batches of `mb`.
template <typename T>
std::vector<double> run(int64_t mb, std::vector<double>* norms) {
  const int64_t B = 4, Tn = 16;
  model::Transformer<T> m(dims(), mb, Tn);
  m.params().initialize(5);
  auto local = comm::make_local();
  BasicDataParallel<backend::Cpu<T>> dp(*local, m, 0, int64_t{1} << 12, {0.9, 0.95, 1e-8, 0.1});
  m.set_grad_ready_hook([&](int i) { dp.on_grad_ready(i); });
  std::mt19937 gen(17);
  std::uniform_int_distribution<int32_t> tok(0, 96);
  std::vector<double> losses;
  for (int step = 0; step < 12; ++step) {
    std::vector<int32_t> in(B * Tn), tg(B * Tn);
    for (auto& x : in) x = tok(gen);
    for (auto& x : tg) x = tok(gen);
    m.params().zero_grads();
    double loss = 0;
    for (int64_t k = 0; k < B / mb; ++k) {
      if (k == B / mb - 1) dp.arm();
      loss += m.forward_backward(in.data() + k * mb * Tn, tg.data() + k * mb * Tn, mb, Tn,
                                 1.0 / static_cast<double>(B * Tn)) /
              static_cast<double>(B / mb);
    }
    dp.finish_reduction();
    const double norm = dp.grad_norm();
    norms->push_back(norm);
    dp.step(3e-2, norm > 1.0 ? 1.0 / (norm + 1e-6) : 1.0);  // clipping fires on most steps
    losses.push_back(loss);
  }
  return losses;
}

template <typename T>
double max_relative_difference(std::vector<double>* norms) {
  std::vector<double> n1, n2;
  const auto a = run<T>(1, &n1), b = run<T>(2, &n2);
  double worst = 0;
  for (size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::abs(a[i] - b[i]) / std::abs(b[i]));
  *norms = n1;
  return worst;
}

TEST(SummationOrder, MicroBatchSplitDiffersByRoundingOnly) {
  std::vector<double> norms;
  const double in_double = max_relative_difference<double>(&norms);
  const double in_float = max_relative_difference<float>(&norms);
  const int clipped = static_cast<int>(std::count_if(norms.begin(), norms.end(), [](double n) { return n > 1.0; }));
  std::printf("4 x 1 vs 2 x 2 micro-batches, 12 steps (%d clipped): max relative loss difference %.2e in double, "
              "%.2e in float\n", clipped, in_double, in_float);
  EXPECT_GT(clipped, 0);
  EXPECT_LT(in_double, 1e-10);  // the same maths
  EXPECT_LT(in_float, 1e-5);    // rounding of fp32 sums in another order (the layout tests' bound)
}

}  // namespace
}  // namespace kumiko::parallel
