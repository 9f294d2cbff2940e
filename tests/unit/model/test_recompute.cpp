// Activation recomputation (train.recompute) and the arena plan:
// - one forward/backward with selective and full recomputation gives the same loss
//   and gradients, bit for bit, as without (float and double, gpt2 and llama, a
//   micro-batch smaller than the planned one), and the decoder still matches;
// - the kept activations shrink: full < selective < none, by the buffers the modes
//   promise;
// - plan_arena (what kumiko plan reports) is exactly the arena the model carves,
//   for whole models, pipeline stages with several chunks and slots, every mode.
#include <cstring>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "kumiko/core/rng.h"
#include "kumiko/model/transformer.h"
#include "kumiko_test_support.h"

namespace kumiko::model {
namespace {

Dims dims(bool llama) { return testing::small_dims(llama, 3); }

struct Batch {
  std::vector<int32_t> inputs, targets;
};
Batch batch(int64_t n, int64_t V, uint64_t seed) {
  Batch b;
  for (int64_t i = 0; i < n; ++i) {
    b.inputs.push_back(static_cast<int32_t>(rng::philox(seed, 0, i)[0] % V));
    b.targets.push_back(static_cast<int32_t>(rng::philox(seed, 1, i)[0] % V));
  }
  return b;
}

template <typename T>
void expect_bitwise_equal_to_none(bool llama) {
  const Dims d = dims(llama);
  const int64_t B = 3, T_ = 20;
  const Batch data = batch(2 * 16, d.V, 5);  // a smaller micro-batch than planned: [2, 16]
  Transformer<T> ref(d, B, T_);
  ref.params().initialize(3);
  ref.params().zero_grads();
  // Two micro-batches: gradients accumulate, the second reuses the buffers.
  const double ref_loss = ref.forward_backward(data.inputs.data(), data.targets.data(), 2, 16, 0.5) +
                          ref.forward_backward(data.targets.data(), data.inputs.data(), 2, 16, 0.5);
  for (Recompute mode : {Recompute::selective, Recompute::full}) {
    Transformer<T> m(d, B, T_, {}, {}, nullptr, mode);
    m.params().initialize(3);
    m.params().zero_grads();
    const double loss = m.forward_backward(data.inputs.data(), data.targets.data(), 2, 16, 0.5) +
                        m.forward_backward(data.targets.data(), data.inputs.data(), 2, 16, 0.5);
    const std::string what = std::string(llama ? "llama " : "gpt2 ") + recompute_name(mode);
    EXPECT_EQ(loss, ref_loss) << what;
    const auto& g = m.params().flat_grads();
    const auto& rg = ref.params().flat_grads();
    ASSERT_EQ(g.numel(), rg.numel());
    EXPECT_EQ(std::memcmp(g.data(), rg.data(), sizeof(T) * static_cast<size_t>(g.numel())), 0)
        << what << ": gradients differ";
    double norm = 0;
    for (int64_t i = 0; i < g.numel(); ++i) norm += static_cast<double>(g.data()[i]) * g.data()[i];
    EXPECT_GT(norm, 0) << what;  // the comparison saw real gradients
    // Decoding goes through the same layers and the shared buffers.
    std::vector<T> a(static_cast<size_t>(d.V)), b(a.size());
    m.begin_decoding(4);
    ref.begin_decoding(4);
    for (int k = 0; k < 3; ++k) {
      m.decode(data.inputs[k], a.data());
      ref.decode(data.inputs[k], b.data());
      EXPECT_EQ(a, b) << what << ": decoding position " << k;
    }
  }
}

TEST(Recompute, FloatGradientsAreBitwiseThoseWithout) {
  expect_bitwise_equal_to_none<float>(false);
  expect_bitwise_equal_to_none<float>(true);
}

TEST(Recompute, DoubleGradientsAreBitwiseThoseWithout) {
  expect_bitwise_equal_to_none<double>(false);
  expect_bitwise_equal_to_none<double>(true);
}

TEST(Recompute, KeptActivationsShrinkByWhatEachModeRecomputes) {
  for (bool llama : {false, true}) {
    const Dims d = dims(llama);
    BufferLayout l;
    l.dims = d;
    l.batch = 4;
    l.seq_len = 16;
    auto plan = [&](Recompute r) {
      l.recompute = r;
      return Transformer<float>::plan_arena(l);
    };
    const ArenaPlan none = plan(Recompute::none), sel = plan(Recompute::selective), full = plan(Recompute::full);
    const size_t N = 4 * 16, f = sizeof(float);
    // Selective drops ln1, ln2 and the MLP activation of every layer (aligned to 256 B).
    const size_t ln = (N * d.C * f + 255) / 256 * 256, act = (N * d.F * f + 255) / 256 * 256;
    EXPECT_EQ(none.activations - sel.activations, static_cast<size_t>(d.L) * (2 * ln + act));
    EXPECT_LT(full.activations, sel.activations / 2);
    EXPECT_GT(full.workspace, sel.workspace);
    EXPECT_EQ(none.per_slot, none.activations);
    for (const ArenaPlan& p : {none, sel, full})
      EXPECT_EQ(p.total, p.parameters + p.gradients + p.activations + p.workspace);
    EXPECT_EQ(none.parameters, 0u);  // a host backend trains on the ParameterStore
  }
}

TEST(Recompute, PlanIsTheArenaTheModelCarves) {
  for (bool llama : {false, true})
    for (Recompute mode : {Recompute::none, Recompute::selective, Recompute::full}) {
      const Dims d = dims(llama);
      std::vector<PipelineStage> stages{PipelineStage{}};
      stages.push_back(pipeline_stage(d, 2, 1, 0, {2, 1}, 2));    // first of two stages, 2 in flight
      stages.push_back(pipeline_stage(d, 2, 1, 1, {2, 1}, 1));    // last stage (the head)
      stages.push_back(pipeline_stage(d, 1, 3, 0, {1, 1, 1}, 3));  // three chunks of one layer
      for (const auto& st : stages) {
        Transformer<float> m(d, 2, 12, {}, st, nullptr, mode);
        BufferLayout l;
        l.dims = d;
        l.batch = 2;
        l.seq_len = 12;
        l.stage = st;
        l.recompute = mode;
        const ArenaPlan p = Transformer<float>::plan_arena(l);
        EXPECT_EQ(p.total, m.arena_bytes()) << recompute_name(mode) << " chunks " << st.chunks.size();
        EXPECT_EQ(p.activations, p.per_slot * static_cast<size_t>(std::max(st.slots, 1)));
      }
    }
}

}  // namespace
}  // namespace kumiko::model
