#pragma once
// Linear weights kept in oneDNN's packed bf16 layout between training steps
// (backend::CpuBf16 with backend.bf16_gemm = onednn).
//
// oneDNN's brgemm matmul multiplies B from a blocked layout with row pairs interleaved
// (kernels/cpu/packed_b.h). Given B as it lies in memory, every call first packs it
// (`jit_brgemm_matmul_copy_b_*` in a profile), a memory-bound pass the microkernels
// wait for. A linear's weight W [out, in] is B twice a step: Wᵀ in the forward
// (y = x Wᵀ) and W in the input gradient (dx = dy W). PackedWeights keeps both packed
// copies; AdamW writes them from the bf16 working copy it has just rounded, piece by
// piece while that piece is in cache (attach), and the GEMMs read them as they are.
// oneDNN runs the same kernels on a packed B as on one it packs itself, so the products
// are the same bits (test PackedB.OnednnMultipliesThePackedLayoutToTheSameBits).
//
// Costs two more bf16 copies of the linear weights (4 bytes a parameter; `kumiko plan`
// counts them) and 4 bytes a parameter more of AdamW's memory traffic. Where the working
// copy is rounded again from the masters (narrow(): ZeRO-1's gather after each step, a
// checkpoint load) the copies are packed in that pass instead; under ZeRO-1
// (set_sharded_updates) AdamW packs nothing. Copies go stale when the working copy is
// written some other way (invalidate()) and are packed again at their next use. A
// weight whose product oneDNN declines at the row count its copies were made for is
// dropped for good.
#include <cstdint>
#include <map>
#include <memory>
#include <vector>

#include "kumiko/core/bf16.h"
#include "kumiko/ops/adamw.h"

namespace kumiko::cpu {

class PackedWeights {
 public:
  // Whether packing can run here: oneDNN's brgemm asks for a layout of packed_b.h's
  // family (AVX512-BF16 or AMX), and this build has the vectorised packers.
  static bool supported();

  PackedWeights();
  ~PackedWeights();
  PackedWeights(const PackedWeights&) = delete;
  PackedWeights& operator=(const PackedWeights&) = delete;

  // y [N, out] (bf16) = x [N, in] Wᵀ (+ b): false (nothing written) where W has no packed
  // copy to use (no packed layout for this shape, a dropped weight, or oneDNN declining
  // this N): multiply W as it is then. Makes and packs W's copies on first use.
  bool forward(bf16* y, const bf16* x, const bf16* w, const bf16* b, int64_t N, int64_t in, int64_t out);
  // dx [N, in] (bf16) (+)= dy [N, out] W, as forward.
  bool input_gradient(bf16* dx, bool accumulate, const bf16* dy, const bf16* w, int64_t N, int64_t in, int64_t out);

  // Before adamw_update over `slices` (fp32 masters, bf16 working copies): a slice that
  // is one packed weight whole packs it in its `after`; weights no slice covers whole
  // are stale (packed again at next use); with sharded updates nothing is packed.
  // updated(): after adamw_update, the copies packed are current.
  void attach(std::vector<AdamWSlice<float>>& slices);
  void updated();
  // ZeRO-1: each AdamW updates a shard and the working copy is rounded again from the
  // gathered masters afterwards, so AdamW packs nothing and narrow() packs everything.
  void set_sharded_updates(bool sharded) { sharded_ = sharded; }
  // The working copies changed some other way: every copy is packed again at its next
  // use (tests; the trainer's own rewrites go through narrow()).
  void invalidate();
  // work[i] = bf16(master[i]) for i < n (cpu::narrow's bits) when the working copies are
  // rounded again from the masters (ZeRO's gather, a checkpoint load): each weight lying
  // wholly inside is packed a piece at a time as it is rounded, as AdamW does; the
  // others are packed again at their next use.
  void narrow(bf16* work, const float* master, int64_t n);

  // Bytes the packed copies hold now.
  size_t bytes() const;
  // Bytes of W's two packed copies for a linear of N rows, as forward() would make them
  // (0 where oneDNN has no packed layout for it): what `kumiko plan` counts.
  static size_t bytes_for(int64_t N, int64_t in, int64_t out);

  // What happened so far, over every PackedWeights of the process (tests): products run
  // on packed copies, whole weights packed (first use, after invalidate()), and pieces
  // packed in AdamW's or narrow()'s pass.
  struct Counts {
    int64_t products = 0, whole = 0, pieces = 0;
  };
  static Counts counts();

  struct Entry;

 private:
  Entry* find(const bf16* w, int64_t N, int64_t in, int64_t out);
  std::map<const bf16*, std::unique_ptr<Entry>> entries_;
  uint64_t generation_ = 1;  // of the working copies; bumped by attach, narrow and invalidate
  bool sharded_ = false;
  std::vector<Entry*> pending_;  // attached to the running AdamW
};

}  // namespace kumiko::cpu
