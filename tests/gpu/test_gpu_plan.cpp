// The GPU model's host-side planning, which needs no GPU (label unit: runs in CI):
// the flat layout equals ParameterStore's (checkpoints and the trainer's host buffers
// use that one), backward's units tile it in the order backward completes them,
// data-parallel buckets partition it, and the arena size matches an itemised count.
#include <gtest/gtest.h>

#include "kumiko/gpu/model.h"
#include "kumiko/model/transformer.h"

namespace kumiko::gpu {
namespace {

config::ModelConfig model_config(const std::string& arch, bool tied) {
  config::ModelConfig m;
  m.arch = arch;
  m.n_layers = 3;
  m.n_heads = 5;
  m.n_kv_heads = arch == "llama" ? 1 : 0;
  m.d_model = 200;  // head dim 40; tensor sizes that are not multiples of 16 floats
  m.d_ff = 1000;
  m.vocab_size = 1001;
  m.max_seq_len = 64;
  m.tie_embeddings = tied;
  return m;
}

struct Arch {
  std::string arch;
  bool tied;
};

class GpuPlan : public ::testing::TestWithParam<Arch> {};

TEST_P(GpuPlan, FlatLayoutIsParameterStores) {
  const auto dims = model::Dims::from(model_config(GetParam().arch, GetParam().tied));
  model::Transformer<float> cpu(dims, 1, 1);
  const auto& p = cpu.params();
  int64_t total = 0;
  const auto offsets = model::flat_offsets<float>(model::parameter_specs(dims), &total);
  ASSERT_EQ(offsets.size(), p.size());
  EXPECT_EQ(total, p.total_numel());
  for (size_t i = 0; i < p.size(); ++i)
    EXPECT_EQ(offsets[i], p.value(static_cast<int>(i)) - p.flat_values().data()) << p.spec(static_cast<int>(i)).name;
}

TEST_P(GpuPlan, BackwardUnitsTileTheLayoutInBackwardOrder) {
  const auto dims = model::Dims::from(model_config(GetParam().arch, GetParam().tied));
  int64_t total = 0;
  const auto specs = model::parameter_specs(dims);
  const auto offsets = model::flat_offsets<float>(specs, &total);
  const auto units = backward_units(dims);
  ASSERT_EQ(units.size(), static_cast<size_t>(dims.L + 2));
  EXPECT_EQ(units.front().second, total);  // final norm (+ untied head) at the end
  EXPECT_EQ(units.back().first, 0);        // embeddings at the start
  for (size_t u = 0; u + 1 < units.size(); ++u) {
    EXPECT_LT(units[u].first, units[u].second);
    EXPECT_EQ(units[u + 1].second, units[u].first) << "unit " << u + 1 << " is not adjacent to unit " << u;
  }
  // Every block's tensors fall in its unit (unit 1 = last block).
  for (size_t i = 0; i < specs.size(); ++i) {
    const std::string& n = specs[i].name;
    if (n.rfind("blocks.", 0) != 0) continue;
    const int64_t l = std::stoll(n.substr(7, n.find('.', 7) - 7));
    const auto& unit = units[static_cast<size_t>(dims.L - l)];
    EXPECT_TRUE(offsets[i] >= unit.first && offsets[i] < unit.second) << n;
  }
}

TEST_P(GpuPlan, BucketsPartitionTheLayout) {
  const auto dims = model::Dims::from(model_config(GetParam().arch, GetParam().tied));
  const auto units = backward_units(dims);
  for (int64_t bytes : {int64_t{1}, int64_t{400000}, int64_t{2000000}, int64_t{1} << 40}) {
    const auto buckets = gradient_buckets(units, bytes);
    ASSERT_FALSE(buckets.empty());
    EXPECT_EQ(buckets.front().end, units.front().second);
    EXPECT_EQ(buckets.back().begin, 0);
    EXPECT_EQ(buckets.back().last_unit, static_cast<int>(units.size()) - 1);  // the tied embedding's gradient
    for (size_t b = 0; b < buckets.size(); ++b) {
      if (b + 1 < buckets.size()) {
        EXPECT_EQ(buckets[b + 1].end, buckets[b].begin);
        EXPECT_GE((buckets[b].end - buckets[b].begin) * 4, bytes);
        EXPECT_LT(buckets[b].last_unit, buckets[b + 1].last_unit);
      }
    }
    if (bytes == 1) {
      EXPECT_EQ(buckets.size(), units.size());
    }
    if (bytes == int64_t{1} << 40) {
      EXPECT_EQ(buckets.size(), 1u);
    }
  }
}

TEST_P(GpuPlan, ArenaMatchesItemisedCount) {
  const auto dims = model::Dims::from(model_config(GetParam().arch, GetParam().tied));
  const int64_t B = 3, T = 50, N = B * T;
  int64_t P = 0;
  model::flat_offsets<float>(model::parameter_specs(dims), &P);
  for (const std::string dtype : {"fp32", "bf16"}) {
    const double e = dtype == "bf16" ? 2 : 4;  // activation bytes
    // Parameters, gradients, m, v (fp32) and the bf16 working copy.
    double bytes = 16.0 * P + (dtype == "bf16" ? 2.0 * P : 0.0);
    const double C = dims.C, F = dims.F, W = dims.qkv_width(), A = dims.Hq * dims.D;
    const double per_layer = e * N * (4 * C + W + A + (dims.llama ? 3 : 2) * F) + 4.0 * N * (4 + dims.Hq);
    bytes += dims.L * per_layer;
    bytes += e * N * (2 * C + dims.V) + 4.0 * N * 3;                  // last residual, final norm, logits, losses
    bytes += e * N * (2 * C + A + W + (dims.llama ? 3 : 2) * F);       // backward scratch
    bytes += 4.0 * (N + N + 3 * N + 2);                                // ids, targets, embedding groups
    const double planned = static_cast<double>(planned_device_bytes(dims, B, T, {dtype, "kumiko", "kumiko"}));
    // Plus the AdamW descriptors, the norm result, one workspace and 256-byte alignment.
    EXPECT_GE(planned, bytes) << dtype;
    EXPECT_LT(planned, bytes * 1.10 + 1e6) << dtype;
  }
  EXPECT_LT(planned_device_bytes(dims, B, T, {"bf16", "kumiko", "kumiko"}),
            planned_device_bytes(dims, B, T, {"fp32", "kumiko", "kumiko"}));
}

INSTANTIATE_TEST_SUITE_P(Archs, GpuPlan,
                         ::testing::Values(Arch{"gpt2", true}, Arch{"gpt2", false}, Arch{"llama", false}),
                         [](const ::testing::TestParamInfo<Arch>& p) {
                           return p.param.arch + (p.param.tied ? "_tied" : "_untied");
                         });

}  // namespace
}  // namespace kumiko::gpu
