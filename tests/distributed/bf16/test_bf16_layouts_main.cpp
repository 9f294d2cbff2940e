// backend.dtype = bf16 on the CPU in every parallel layout, two ranks, against one
// process in bf16 (the fp32 layouts: tests/distributed/{dp,tp,pp}; bf16 one process
// against fp32 and PyTorch: tests/integration/bf16).
//
// What may differ, and the bounds (8 steps of the layout tests' 4-layer model; measured
// 2026-12-04 in brackets, gpt2 / llama):
//   pp2 (1f1b, interleaved): stages pass bf16 activations exactly and every op runs on
//     the same rows as in one process. Untied (llama here): loss and weights 1e-5, as in
//     fp32 [0 loss, 0 weights]. Tied embeddings (gpt2 here): the first and last stages
//     each accumulate their part of the embedding's gradient over the micro-batches and
//     sum the two at the end, where one process adds both parts into one buffer micro-
//     batch by micro-batch: another fp32 summation order [2.8e-8 weights on Zen 4 with
//     OpenBLAS's SkylakeX/Cooperlake kernels]. In bf16 such an fp32 difference can flip
//     a working-copy rounding (see dp below) [7.8e-5 with its Haswell/Zen kernels, CI
//     2026-12-05; the same gpt2 untied: 0 and 0], so tied pp is held to dp's bounds
//     and the first-step check below; the fp32 pp test holds the tied sum to 1e-5.
//   dp2, dp2 + ZeRO-1: each rank runs whole sequences, so activations are as in one
//     process; only the fp32 gradient sums are split (reduced in fp32), and the
//     master weights differ by fp32 rounding. A master weight near the midpoint of two
//     bf16 numbers then rounds its working copy the other way: one bf16 rounding of
//     that element differs, which changes every later activation at bf16 rounding
//     size, and AdamW turns a sign change of a small gradient (zero-initialised biases
//     most) into a 2 lr step. Such flips are rare but not machine-independent (whether
//     one happens depends on the GEMM's summation order: OpenBLAS's kernels for the
//     CPU, or oneDNN's). Each is one of the roundings in which bf16 and fp32 differ
//     everywhere, so dp is held to the one-process bf16-vs-fp32 distance: loss
//     max(1e-5, that loss gap), weights 1x that weight distance [AMD Zen 3: 0 / 0
//     loss, 4.0e-6 / 5.4e-8 weights; AMD Zen 4, emulated or oneDNN: loss 5e-6 to
//     1.2e-5 / 0, weights 2.5e-4 to 2.8e-4 / 5.2e-8, against 5.2e-2 / 1.6e-2].
//     That weight bound is weak: a dp bug whose effect is of bf16-rounding size would
//     pass it (the fp32 dp tests hold the reduction itself to 1e-5). What pins dp in
//     bf16 is the first step: before any update every rank runs the one process's
//     weights on the same rows with the same GEMM shapes, so only the loss's sum over
//     micro-batches is split: 1e-6 (a few fp32 roundings of a sum of positive terms).
//     pp passes the same first-step check.
//   tp2 (+ sequence parallelism): a row-parallel linear's halves are each rounded to
//     bf16 before their fp32 sum, where one process rounds the sum once: one more bf16
//     rounding (2^-9 relative) of each block output, so loss 2e-3. Those roundings are
//     of the kind and size that separate bf16 from fp32 at all; AdamW turns them into
//     +-lr steps of the weights whose gradients they dominate (zero-initialised biases
//     most), so the weights are held to 3x the distance between the one-process bf16
//     and fp32 runs [loss 1.1e-4 / 3.6e-5; weights 5.5e-2 / 1.1e-2 against bf16-fp32
//     distances 5.1e-2 / 1.6e-2].
// Each layout must also differ from fp32 (a bf16 run that fell back to fp32 fails).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>

#include <gtest/gtest.h>

#include "kumiko/comm/communicator.h"
#include "kumiko/ops/matmul_bf16.h"
#include "kumiko/ops/packed_weights.h"
#include "kumiko_test_support.h"
#include "layout_compare.h"

namespace kumiko {
namespace {

std::string g_root;

config::Config tiny(const std::string& arch, const std::string& gemm, const std::string& run_dir) {
  auto c = testing::layout_config(arch, run_dir);
  c.backend.bf16_gemm = gemm;
  c.train.micro_batch = 2;
  c.train.steps = 8;
  c.backend.dtype = "bf16";
  return c;
}

struct Layout {
  const char* name;
  int dp, tp, pp, zero, chunks;
  bool sp;
  const char* schedule;
  // < 0: -x times the one-process bf16-vs-fp32 distance (loss: at least 1e-5)
  double loss_rtol, weight_rtol;
};

double largest_loss_gap(const testing::LayoutResult& a, const testing::LayoutResult& b) {
  double g = 0;
  for (size_t i = 0; i < a.losses.size(); ++i) g = std::max(g, std::abs(a.losses[i] - b.losses[i]) / b.losses[i]);
  return g;
}

class Bf16Layouts : public ::testing::TestWithParam<std::string> {};

// Every layout with every bf16 GEMM this build and CPU have (emulated everywhere;
// oneDNN's AVX512-BF16 / AMX kernels where the CPU has them), each against one process
// with the same GEMM.
TEST_P(Bf16Layouts, EveryLayoutFollowsOneProcess) {
  const std::string arch = GetParam();
  auto& world = comm::world();
  ASSERT_EQ(world.size(), 2) << "run under mpirun -np 2";
  const int r = world.rank();
  auto solo = world.split(r, 0, "solo");
  testing::LayoutResult fp32;
  if (r == 0) {
    auto c = tiny(arch, "auto", g_root + "/" + arch + "-one-fp32");
    c.backend.dtype = "fp32";
    fp32 = testing::train_on(*solo, c);
  }
  for (const cpu::Bf16Gemm g : cpu::bf16_gemms_available()) {
    const std::string gemm = cpu::bf16_gemm_name(g);
    testing::LayoutResult one;
    double bf16_distance = 0;  // largest per-tensor weight distance, one process bf16 vs fp32
    double bf16_loss_gap = 0;  // largest relative loss gap, one process bf16 vs fp32
    if (r == 0) {
      one = testing::train_on(*solo, tiny(arch, gemm, g_root + "/" + arch + "-" + gemm + "-one"));
      for (size_t i = 0; i < one.weights.size(); ++i)
        bf16_distance =
            std::max(bf16_distance, testing::relative_difference(one.weights[i], fp32.weights[i], one.names[i]));
      bf16_loss_gap = largest_loss_gap(one, fp32);
      std::printf("%s %s one process: bf16 vs fp32 largest loss gap %.2e, weights %.2e\n", arch.c_str(),
                  gemm.c_str(), bf16_loss_gap, bf16_distance);
    }
    // Tied embeddings: pp sums the embedding's gradient in another order (see the top).
    const double pp_rtol = tiny(arch, gemm, "").model.tie_embeddings ? -1 : 1e-5;
    const Layout layouts[] = {
        {"dp2", 2, 1, 1, 0, 1, false, "1f1b", -1, -1},
        {"dp2-zero1", 2, 1, 1, 1, 1, false, "1f1b", -1, -1},
        {"tp2", 1, 2, 1, 0, 1, false, "1f1b", 2e-3, -3},
        {"tp2-sp", 1, 2, 1, 0, 1, true, "1f1b", 2e-3, -3},
        {"pp2-1f1b", 1, 1, 2, 0, 1, false, "1f1b", pp_rtol, pp_rtol},
        {"pp2-interleaved", 1, 1, 2, 0, 2, false, "interleaved", pp_rtol, pp_rtol},
    };
    for (const Layout& l : layouts) {
      auto c = tiny(arch, gemm, g_root + "/" + arch + "-" + gemm + "-" + l.name);
      c.parallel.dp = l.dp;
      c.parallel.tp = l.tp;
      c.parallel.pp = l.pp;
      c.parallel.zero = l.zero;
      c.parallel.pp_chunks = l.chunks;
      c.parallel.pp_schedule = l.schedule;
      c.parallel.sequence_parallel = l.sp;
      const testing::LayoutResult got = testing::train_on(world, c);
      if (r != 0) continue;
      const std::string what = arch + " bf16 (" + gemm + ") " + l.name;
      ASSERT_EQ(got.losses.size(), one.losses.size()) << what;
      double wgap = 0;
      for (size_t i = 0; i < got.weights.size(); ++i)
        wgap = std::max(wgap, testing::relative_difference(got.weights[i], one.weights[i], one.names[i]));
      const double weight_rtol = l.weight_rtol < 0 ? -l.weight_rtol * bf16_distance : l.weight_rtol;
      const double loss_rtol = l.loss_rtol < 0 ? std::max(1e-5, -l.loss_rtol * bf16_loss_gap) : l.loss_rtol;
      std::printf("%s: largest loss gap to one process %.2e (first step %.2e), weights %.2e (bounds %.1e, %.1e)\n",
                  what.c_str(), largest_loss_gap(got, one), std::abs(got.losses[0] - one.losses[0]) / one.losses[0],
                  wgap, loss_rtol, weight_rtol);
      testing::expect_same_run(got, one, what, weight_rtol, loss_rtol);
      if (l.tp == 1) {  // dp and pp: the first step runs the same rows on the same weights
        EXPECT_NEAR(got.losses[0], one.losses[0], 1e-6 * one.losses[0]) << what << ": first step";
      }
      EXPECT_NE(got.losses, fp32.losses) << what << ": the same losses as fp32";
    }
  }
}

// backend.packed_weights under ZeRO-1: AdamW updates a shard and packs nothing; the
// gather's narrow() rounds the working copy again and packs every weight in that pass.
// The products are oneDNN's on the same bits either way, so the run is the very same
// as without packing (a copy left stale after the gather changes the losses at once);
// and each weight is packed whole only at its first use, then by the gathers' pieces.
TEST(Bf16PackedWeights, ZeroOneTrainsTheSameBits) {
  if (!cpu::PackedWeights::supported())
    GTEST_SKIP() << "no oneDNN brgemm with a packed bf16 layout here (it needs AVX512-BF16 or AMX and oneDNN)";
  auto& world = comm::world();
  ASSERT_EQ(world.size(), 2) << "run under mpirun -np 2";
  for (const std::string arch : {"gpt2", "llama"}) {
    testing::LayoutResult runs[2];
    cpu::PackedWeights::Counts before, after;
    int64_t layers = 0;
    for (const bool packed : {false, true}) {
      auto c = tiny(arch, "onednn", g_root + "/" + arch + "-zero1-packed-" + (packed ? "on" : "off"));
      c.parallel.dp = 2;
      c.parallel.zero = 1;
      c.backend.packed_weights = packed;
      layers = c.model.n_layers;
      before = cpu::PackedWeights::counts();
      runs[packed] = testing::train_on(world, c);
      after = cpu::PackedWeights::counts();
    }
    EXPECT_GT(after.products - before.products, 0) << arch << ": no product ran on packed copies";
    EXPECT_GT(after.pieces - before.pieces, 0) << arch << ": the gathers packed nothing";
    EXPECT_GT(after.whole - before.whole, 0) << arch;
    EXPECT_LE(after.whole - before.whole, 5 * layers + 1) << arch << ": weights packed whole again after gathers";
    if (world.rank() != 0) continue;
    ASSERT_EQ(runs[1].losses.size(), 8u) << arch;
    EXPECT_EQ(runs[1].losses, runs[0].losses) << arch;
    ASSERT_EQ(runs[1].weights.size(), runs[0].weights.size());
    for (size_t i = 0; i < runs[0].weights.size(); ++i)
      EXPECT_TRUE(runs[1].weights[i] == runs[0].weights[i]) << arch << " " << runs[0].names[i];
  }
}

INSTANTIATE_TEST_SUITE_P(Arch, Bf16Layouts, ::testing::Values("gpt2", "llama"));

}  // namespace
}  // namespace kumiko

int main(int argc, char** argv) {
  return kumiko::testing::mpi_test_main(argc, argv, "kumiko-bf16-layouts", kumiko::g_root);
}
