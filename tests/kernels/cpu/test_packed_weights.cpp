// Weights kept packed for oneDNN (kernels/cpu/packed_b.h, kumiko/ops/packed_weights.h).
// The packers against PackedB::offset, element by element, over whole matrices and row
// ranges of any alignment (odd K, N not a multiple of the block, every block width); the
// layout against oneDNN's own by multiplying: oneDNN's brgemm on a packed B must give the
// same bits as on B as it lies, which it packs itself (any misplaced element changes the
// products); and PackedWeights' copies kept current by AdamW, packed again after
// invalidate(), and, after a partial (ZeRO) update, by narrow() as it rounds.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/cpu/onednn/matmul_bf16_onednn.h"
#include "kernels/cpu/packed_b.h"
#include "kumiko/core/bf16.h"
#include "kumiko/ops/adamw.h"
#include "kumiko/ops/bf16.h"
#include "kumiko/ops/matmul_bf16.h"
#include "kumiko/ops/packed_weights.h"
#include "tests/kernels/cpu/test_util.h"

namespace kumiko {
namespace {

using test::random_bf16;

std::vector<uint16_t> bits(const bf16* p, int64_t n) {
  std::vector<uint16_t> b(static_cast<size_t>(n));
  std::memcpy(b.data(), p, b.size() * sizeof(uint16_t));
  return b;
}

// W [rows, cols] with a padded leading dimension, packed element by element.
std::vector<uint16_t> reference(const cpu::PackedB& L, const std::vector<bf16>& w, int64_t ld, bool transposed) {
  std::vector<uint16_t> out(static_cast<size_t>(L.elements()), 0);
  for (int64_t k = 0; k < L.K; ++k)
    for (int64_t n = 0; n < L.N; ++n)
      out[static_cast<size_t>(L.offset(k, n))] = (transposed ? w[n * ld + k] : w[k * ld + n]).bits;
  return out;
}

TEST(PackedB, PackersWriteTheLayoutOverAnyRowRanges) {
  struct Case {
    int64_t rows, cols, nb;
  };
  for (const Case c : {Case{64, 64, 64}, Case{130, 77, 64}, Case{96, 35, 48}, Case{33, 200, 32}, Case{7, 5, 16},
                       Case{200, 768, 64}}) {
    const int64_t ld = c.cols + 3;
    const auto w = random_bf16(static_cast<size_t>(c.rows * ld), 7);
    // Row ranges: everything at once, whole blocks, and cuts at odd places.
    const std::vector<std::vector<int64_t>> cuts = {
        {0, c.rows}, {0, std::min(c.rows, c.nb), c.rows}, {0, 1, c.rows / 3, c.rows / 3 + 1, c.rows}};
    for (bool transposed : {true, false}) {
      const cpu::PackedB L =
          transposed ? cpu::packed_b_layout(c.cols, c.rows, c.nb) : cpu::packed_b_layout(c.rows, c.cols, c.nb);
      const auto want = reference(L, w, ld, transposed);
      for (const auto& cut : cuts) {
        std::vector<bf16> out(static_cast<size_t>(L.elements()), bf16{0});
        for (size_t i = 0; i + 1 < cut.size(); ++i) {
          if (cut[i] >= cut[i + 1]) continue;
          if (transposed)
            cpu::pack_b_transposed_rows(L, out.data(), w.data(), ld, cut[i], cut[i + 1]);
          else
            cpu::pack_b_rows(L, out.data(), w.data(), ld, cut[i], cut[i + 1]);
        }
        EXPECT_EQ(bits(out.data(), L.elements()), want)
            << (transposed ? "B = W^T" : "B = W") << " of W [" << c.rows << ", " << c.cols << "], nb " << c.nb
            << ", " << cut.size() - 1 << " ranges";
      }
    }
  }
}

// C = A B from B packed (both orientations of W) against oneDNN on B as it lies.
TEST(PackedB, OnednnMultipliesThePackedLayoutToTheSameBits) {
  if (!cpu::PackedWeights::supported())
    GTEST_SKIP() << "no oneDNN brgemm with a packed bf16 layout here (it needs AVX512-BF16 or AMX and oneDNN)";
  struct Case {
    int64_t M, out, in;
  };
  for (const Case c : {Case{256, 2304, 768}, Case{256, 768, 3072}, Case{2048, 1024, 256}, Case{37, 100, 45},
                       Case{5, 64, 33}, Case{64, 8192, 256}}) {
    const auto w = random_bf16(static_cast<size_t>(c.out * c.in), 11);
    const auto x = random_bf16(static_cast<size_t>(c.M * c.in), 12);
    const auto dy = random_bf16(static_cast<size_t>(c.M * c.out), 13);
    const auto bias = random_bf16(static_cast<size_t>(c.out), 14);
    // Forward, y = x W^T + b (bf16 out): B = W^T.
    const cpu::PackedB fwd = cpu::onednn::packed_b(c.M, c.out, c.in, true);
    ASSERT_TRUE(fwd) << "oneDNN asks for another layout for " << c.M << " x " << c.out << " x " << c.in;
    std::vector<bf16> pf(static_cast<size_t>(fwd.elements()), bf16{0});
    cpu::pack_b_transposed_rows(fwd, pf.data(), w.data(), c.in, 0, c.out);
    std::vector<bf16> y0(static_cast<size_t>(c.M * c.out)), y1(y0.size());
    cpu::matmul_bf16_out(cpu::Bf16Gemm::onednn, false, true, c.M, c.out, c.in, x.data(), c.in, w.data(), c.in,
                         bias.data(), false, y0.data(), c.out);
    ASSERT_TRUE(cpu::onednn::matmul_packed(c.M, x.data(), c.in, fwd, pf.data(), bias.data(), false, y1.data(), c.out));
    EXPECT_EQ(bits(y1.data(), c.M * c.out), bits(y0.data(), c.M * c.out)) << "forward " << c.M << " x " << c.out;
    // Input gradient, dx += dy W (bf16 out, accumulated; fp32 out too): B = W.
    const cpu::PackedB dxl = cpu::onednn::packed_b(c.M, c.in, c.out, true);
    ASSERT_TRUE(dxl);
    std::vector<bf16> pd(static_cast<size_t>(dxl.elements()), bf16{0});
    cpu::pack_b_rows(dxl, pd.data(), w.data(), c.in, 0, c.out);
    auto dx0 = random_bf16(static_cast<size_t>(c.M * c.in), 15), dx1 = dx0;
    cpu::matmul_bf16_out(cpu::Bf16Gemm::onednn, false, false, c.M, c.in, c.out, dy.data(), c.out, w.data(), c.in,
                         nullptr, true, dx0.data(), c.in);
    ASSERT_TRUE(cpu::onednn::matmul_packed(c.M, dy.data(), c.out, dxl, pd.data(), nullptr, true, dx1.data(), c.in));
    EXPECT_EQ(bits(dx1.data(), c.M * c.in), bits(dx0.data(), c.M * c.in)) << "input gradient " << c.M << " x " << c.in;
    std::vector<float> f0(static_cast<size_t>(c.M * c.in)), f1(f0.size());
    cpu::matmul_bf16_out(cpu::Bf16Gemm::onednn, false, false, c.M, c.in, c.out, dy.data(), c.out, w.data(), c.in,
                         nullptr, false, f0.data(), c.in);
    ASSERT_TRUE(cpu::onednn::matmul_packed(c.M, dy.data(), c.out, dxl, pd.data(), nullptr, false, f1.data(), c.in));
    EXPECT_EQ(std::memcmp(f0.data(), f1.data(), f0.size() * sizeof(float)), 0) << "fp32 out " << c.M << " x " << c.in;
  }
}

// The same products as W as it lies, step after step: AdamW repacks, invalidate() makes
// the next use repack, narrow() repacks after a partial update.
TEST(PackedWeights, AdamWKeepsTheCopiesCurrent) {
  if (!cpu::PackedWeights::supported())
    GTEST_SKIP() << "no oneDNN brgemm with a packed bf16 layout here (it needs AVX512-BF16 or AMX and oneDNN)";
  struct Case {
    int64_t N, in, out;
  };
  // 200 rows: one AdamW piece, a short last block; 1000 x 200: four pieces of 320 rows
  // (the last 40), packed by both threads at once.
  for (const Case c : {Case{48, 96, 200}, Case{64, 200, 1000}}) test::with_threads(2, [&] {
    const int64_t N = c.N, in = c.in, out = c.out;
    const auto x = random_bf16(static_cast<size_t>(N * in), 21);
    const auto dy = random_bf16(static_cast<size_t>(N * out), 22);
    auto master = test::random_vec<float>(static_cast<size_t>(out * in), 23);
    auto grad = test::random_vec<float>(master.size(), 24);
    std::vector<float> m(master.size(), 0.0f), v(master.size(), 0.0f);
    std::vector<bf16> work(master.size());
    for (size_t i = 0; i < master.size(); ++i) work[i] = to_bf16(master[i]);

    cpu::PackedWeights packed;
    auto expect_plain_products = [&](const std::string& when) {
      std::vector<bf16> y0(static_cast<size_t>(N * out)), y1(y0.size());
      cpu::matmul_bf16_out(cpu::Bf16Gemm::onednn, false, true, N, out, in, x.data(), in, work.data(), in, nullptr,
                           false, y0.data(), out);
      ASSERT_TRUE(packed.forward(y1.data(), x.data(), work.data(), nullptr, N, in, out)) << when;
      EXPECT_EQ(bits(y1.data(), N * out), bits(y0.data(), N * out)) << "forward, " << when;
      std::vector<bf16> d0(static_cast<size_t>(N * in)), d1(d0.size());
      cpu::matmul_bf16_out(cpu::Bf16Gemm::onednn, false, false, N, in, out, dy.data(), out, work.data(), in, nullptr,
                           false, d0.data(), in);
      ASSERT_TRUE(packed.input_gradient(d1.data(), false, dy.data(), work.data(), N, in, out)) << when;
      EXPECT_EQ(bits(d1.data(), N * in), bits(d0.data(), N * in)) << "input gradient, " << when;
    };
    const std::string shape = std::to_string(out) + " x " + std::to_string(in) + ", ";
    const auto before = cpu::PackedWeights::counts();
    expect_plain_products(shape + "first use");
    EXPECT_EQ(packed.bytes(), cpu::PackedWeights::bytes_for(N, in, out));
    EXPECT_GE(packed.bytes(), 2 * master.size() * sizeof(bf16));

    for (int64_t step = 1; step <= 3; ++step) {
      std::vector<cpu::AdamWSlice<float>> slices{
          {master.data(), grad.data(), m.data(), v.data(), work.data(), static_cast<int64_t>(master.size()), 0.1}};
      packed.attach(slices);
      ASSERT_NE(slices[0].after, nullptr) << "the whole weight's update packs it";
      cpu::adamw_update(slices.data(), slices.size(), 1e-2, 0.9, 0.95, 1e-8, 1.0, step);
      packed.updated();
      expect_plain_products(shape + "after AdamW step " + std::to_string(step));
    }
    // Packed whole once; then only by AdamW's pieces.
    const auto after = cpu::PackedWeights::counts();
    const int64_t nb = cpu::onednn::packed_b(N, out, in, true).nb;
    const int64_t rows = std::max<int64_t>(1, cpu::kAdamWPiece / (nb * in)) * nb;  // AdamW's piece
    EXPECT_EQ(after.whole - before.whole, 1) << shape;
    EXPECT_EQ(after.products - before.products, 8) << shape;
    EXPECT_EQ(after.pieces - before.pieces, 3 * ((out + rows - 1) / rows)) << shape;

    // The working copy changed by someone else (a checkpoint load): packed again on use.
    for (auto& w : work) w = to_bf16(-static_cast<float>(w));
    packed.invalidate();
    expect_plain_products(shape + "after invalidate()");
    EXPECT_EQ(cpu::PackedWeights::counts().whole - before.whole, 2) << shape;

    // An update of part of it (a ZeRO shard): AdamW leaves the copies stale; the
    // gather's narrow() rounds the whole working copy again and packs it in that pass
    // (the same bits as cpu::narrow), not at the next use.
    std::vector<cpu::AdamWSlice<float>> half{
        {master.data(), grad.data(), m.data(), v.data(), work.data(), static_cast<int64_t>(master.size() / 2), 0.1}};
    packed.attach(half);
    EXPECT_EQ(half[0].after, nullptr);
    cpu::adamw_update(half.data(), half.size(), 1e-2, 0.9, 0.95, 1e-8, 1.0, 4);
    packed.updated();
    for (size_t i = master.size() / 2; i < master.size(); ++i) master[i] *= -0.5f;  // the other rank's half
    std::vector<bf16> rounded(master.size());
    cpu::narrow(rounded.data(), master.data(), static_cast<int64_t>(master.size()));
    const auto gathered = cpu::PackedWeights::counts();
    packed.narrow(work.data(), master.data(), static_cast<int64_t>(master.size()));
    EXPECT_EQ(bits(work.data(), static_cast<int64_t>(work.size())), bits(rounded.data(), static_cast<int64_t>(rounded.size())));
    EXPECT_EQ(cpu::PackedWeights::counts().pieces - gathered.pieces, (out + rows - 1) / rows) << shape;
    expect_plain_products(shape + "after a ZeRO update and narrow()");
    EXPECT_EQ(cpu::PackedWeights::counts().whole - gathered.whole, 0) << shape << "packed again at use";

    // narrow() over part of the weight (it lies partly outside): packed whole at next use.
    for (auto& value : master) value *= 1.5f;
    packed.narrow(work.data(), master.data(), static_cast<int64_t>(master.size() / 2));
    cpu::narrow(work.data() + master.size() / 2, master.data() + master.size() / 2,
                static_cast<int64_t>(master.size() - master.size() / 2));
    expect_plain_products(shape + "after narrow() over half of it");
    EXPECT_EQ(cpu::PackedWeights::counts().whole - gathered.whole, 1) << shape;
    EXPECT_EQ(packed.bytes(), cpu::PackedWeights::bytes_for(N, in, out));
  });
}

// Two weights in one flat array with gaps, [pad | W0 | pad | W1 | tail], as the model's
// parameters lie. AdamW packs the weights its slices cover whole, and nothing under
// sharded updates (ZeRO-1); narrow() then rounds the whole array as cpu::narrow does and
// packs both weights in its pass (products as from W as it lies, no whole packs), and a
// narrow() over a range that starts inside W0 packs W1 only (W0 at its next use).
TEST(PackedWeights, NarrowPacksEveryWeightItRoundsWhole) {
  if (!cpu::PackedWeights::supported())
    GTEST_SKIP() << "no oneDNN brgemm with a packed bf16 layout here (it needs AVX512-BF16 or AMX and oneDNN)";
  test::with_threads(2, [&] {
    const int64_t N = 32, in = 200, out = 700, n = in * out;  // 700 rows: 3 narrow pieces of 320 rows
    const int64_t at[2] = {37, 37 + n + 101}, total = at[1] + n + 59;
    const auto x = random_bf16(static_cast<size_t>(N * in), 31);
    const auto dy = random_bf16(static_cast<size_t>(N * out), 34);
    auto master = test::random_vec<float>(static_cast<size_t>(total), 32);
    const auto grad = test::random_vec<float>(master.size(), 33);
    std::vector<float> moments(2 * master.size(), 0.0f);  // m, then v
    std::vector<bf16> work(master.size());
    cpu::narrow(work.data(), master.data(), total);
    cpu::PackedWeights packed;
    auto expect_plain_products = [&](int k, const std::string& when) {
      const bf16* w = work.data() + at[k];
      std::vector<bf16> y0(static_cast<size_t>(N * out)), y1(y0.size());
      cpu::matmul_bf16_out(cpu::Bf16Gemm::onednn, false, true, N, out, in, x.data(), in, w, in, nullptr, false,
                           y0.data(), out);
      ASSERT_TRUE(packed.forward(y1.data(), x.data(), w, nullptr, N, in, out)) << when;
      EXPECT_EQ(bits(y1.data(), N * out), bits(y0.data(), N * out)) << "W" << k << " forward, " << when;
      std::vector<bf16> d0(static_cast<size_t>(N * in)), d1(d0.size());
      cpu::matmul_bf16_out(cpu::Bf16Gemm::onednn, false, false, N, in, out, dy.data(), out, w, in, nullptr, false,
                           d0.data(), in);
      ASSERT_TRUE(packed.input_gradient(d1.data(), false, dy.data(), w, N, in, out)) << when;
      EXPECT_EQ(bits(d1.data(), N * in), bits(d0.data(), N * in)) << "W" << k << " input gradient, " << when;
    };
    for (int k = 0; k < 2; ++k) expect_plain_products(k, "first use");
    auto slice = [&](int64_t begin, int64_t count) {
      return cpu::AdamWSlice<float>{master.data() + begin, grad.data() + begin, moments.data() + begin,
                                    moments.data() + total + begin, work.data() + begin, count, 0.1};
    };
    // W0 whole and part of W1: W0 packed by AdamW, W1 stale.
    std::vector<cpu::AdamWSlice<float>> some{slice(at[0], n), slice(at[1], n / 2)};
    packed.attach(some);
    EXPECT_NE(some[0].after, nullptr);
    EXPECT_EQ(some[1].after, nullptr);
    cpu::adamw_update(some.data(), some.size(), 1e-2, 0.9, 0.95, 1e-8, 1.0, 1);
    packed.updated();
    auto c0 = cpu::PackedWeights::counts();
    expect_plain_products(0, "after AdamW over W0 whole");
    expect_plain_products(1, "after AdamW over half of W1");
    EXPECT_EQ(cpu::PackedWeights::counts().whole - c0.whole, 1) << "W1 packed again at use";

    // Sharded updates: AdamW packs nothing, the gather's narrow() packs both.
    packed.set_sharded_updates(true);
    std::vector<cpu::AdamWSlice<float>> shard{slice(0, at[0]), slice(at[0], n), slice(at[1], n / 3)};
    packed.attach(shard);
    for (const auto& sl : shard) EXPECT_EQ(sl.after, nullptr) << "AdamW packed a shard's weight";
    cpu::adamw_update(shard.data(), shard.size(), 1e-2, 0.9, 0.95, 1e-8, 1.0, 2);
    packed.updated();
    for (auto it = master.begin() + (at[1] + n / 3); it != master.end(); ++it) *it *= -0.5f;  // the other rank's
    std::vector<bf16> rounded(master.size());
    cpu::narrow(rounded.data(), master.data(), total);
    c0 = cpu::PackedWeights::counts();
    packed.narrow(work.data(), master.data(), total);
    const auto c1 = cpu::PackedWeights::counts();
    EXPECT_EQ(bits(work.data(), total), bits(rounded.data(), total));
    const int64_t nb = cpu::onednn::packed_b(N, out, in, true).nb;
    const int64_t rows = std::max<int64_t>(1, cpu::kAdamWPiece / (nb * in)) * nb;
    EXPECT_EQ(c1.pieces - c0.pieces, 2 * ((out + rows - 1) / rows));
    for (int k = 0; k < 2; ++k) expect_plain_products(k, "after narrow()");
    EXPECT_EQ(cpu::PackedWeights::counts().whole - c1.whole, 0) << "packed again at use after narrow()";

    // A range starting inside W0: W1 packed in the pass, W0 at its next use.
    for (auto& value : master) value *= 1.5f;
    cpu::narrow(work.data(), master.data(), at[0] + 7);
    const auto c2 = cpu::PackedWeights::counts();
    packed.narrow(work.data() + at[0] + 7, master.data() + at[0] + 7, total - at[0] - 7);
    EXPECT_EQ(cpu::PackedWeights::counts().pieces - c2.pieces, (out + rows - 1) / rows);
    for (int k = 0; k < 2; ++k) expect_plain_products(k, "after narrow() from inside W0");
    EXPECT_EQ(cpu::PackedWeights::counts().whole - c2.whole, 1);
  });
}

}  // namespace
}  // namespace kumiko
