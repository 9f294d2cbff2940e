// The CUDA backend's memory as kumiko plan computes it on the host (no GPU needed;
// label unit, runs in every build): the flat layout equals ParameterStore's
// (checkpoints and the trainer's host buffers use that one), and the arena the one
// model plans for fp32 and bf16 plus the AdamW moments match an itemised count.
#include <gtest/gtest.h>

#include "kumiko/model/transformer.h"
#include "kumiko/plan/plan.h"

namespace kumiko::plan {
namespace {

config::Config cuda_config(const std::string& arch, bool tied, const std::string& dtype) {
  config::Config c;
  auto& m = c.model;
  m.arch = arch;
  m.n_layers = 3;
  m.n_heads = 5;
  m.n_kv_heads = arch == "llama" ? 1 : 0;
  m.d_model = 200;  // head dim 40; tensor sizes that are not multiples of 16 floats
  m.d_ff = 1000;
  m.vocab_size = 1001;
  m.max_seq_len = 64;
  m.tie_embeddings = tied;
  c.data.seq_len = 50;
  c.train.micro_batch = 3;
  c.train.global_batch = 3;
  c.backend.device = "cuda";
  c.backend.dtype = dtype;
  return c;
}

struct Arch {
  std::string arch;
  bool tied;
};

class GpuPlan : public ::testing::TestWithParam<Arch> {};

TEST_P(GpuPlan, FlatLayoutIsParameterStores) {
  const auto dims = model::Dims::from(cuda_config(GetParam().arch, GetParam().tied, "fp32").model);
  model::Transformer<float> cpu(dims, 1, 1);
  const auto& p = cpu.params();
  int64_t total = 0;
  const auto offsets = model::flat_offsets<float>(model::parameter_specs(dims), &total);
  ASSERT_EQ(offsets.size(), p.size());
  EXPECT_EQ(total, p.total_numel());
  for (size_t i = 0; i < p.size(); ++i)
    EXPECT_EQ(offsets[i], p.value(static_cast<int>(i)) - p.flat_values().data()) << p.spec(static_cast<int>(i)).name;
}

TEST_P(GpuPlan, ArenaAndMomentsMatchItemisedCount) {
  double planned_fp32 = 0;
  for (const std::string dtype : {"fp32", "bf16"}) {
    const auto cfg = cuda_config(GetParam().arch, GetParam().tied, dtype);
    const auto dims = model::Dims::from(cfg.model);
    const int64_t N = 3 * 50;
    int64_t P = 0;
    model::flat_offsets<float>(model::parameter_specs(dims), &P);
    const double e = dtype == "bf16" ? 2 : 4;  // activation bytes
    // Parameters, gradients, m, v (fp32) and the bf16 working copy.
    double bytes = 16.0 * P + (dtype == "bf16" ? 2.0 * P : 0.0);
    const double C = dims.C, F = dims.F, W = dims.qkv_width(), A = dims.Hq * dims.D;
    const double per_layer = e * N * (4 * C + W + A + (dims.llama ? 3 : 2) * F) + 4.0 * N * (4 + dims.Hq);
    bytes += dims.L * per_layer;
    bytes += e * N * (2 * C + dims.V) + 4.0 * N * 3;             // last residual, final norm, logits, losses
    bytes += e * N * (2 * C + A + W + (dims.llama ? 3 : 2) * F);  // backward scratch
    bytes += 4.0 * (N + N + 3 * N);                               // ids, targets, vocab-parallel loss scratch
    const Memory m = rank_memory(cfg, 0);
    const double planned = m.arena + m.optimizer;
    // Plus 256-byte alignment of every buffer.
    EXPECT_GE(planned, bytes) << dtype;
    EXPECT_LT(planned, bytes * 1.02 + 64 * 256) << dtype;
    if (dtype == "fp32")
      planned_fp32 = m.total();
    else
      EXPECT_LT(m.total(), planned_fp32);
  }
}

INSTANTIATE_TEST_SUITE_P(Archs, GpuPlan,
                         ::testing::Values(Arch{"gpt2", true}, Arch{"gpt2", false}, Arch{"llama", false}),
                         [](const ::testing::TestParamInfo<Arch>& p) {
                           return p.param.arch + (p.param.tied ? "_tied" : "_untied");
                         });

}  // namespace
}  // namespace kumiko::plan
