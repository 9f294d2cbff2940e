// The CUDA backend's host-side planning, which needs no GPU (label unit: runs in CI):
// the flat layout equals ParameterStore's (checkpoints and the trainer's host buffers
// use that one), and the arena the one model plans matches an itemised count.
#include <gtest/gtest.h>

#include "kumiko/gpu/engine.h"
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
    bytes += 4.0 * (N + N + 3 * N);                                    // ids, targets, vocab-parallel loss scratch
    const double planned = static_cast<double>(planned_device_bytes(dims, B, T, {dtype, "kumiko", "kumiko"}));
    // Plus one kernel workspace and 256-byte alignment.
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
