// Linear weights kept packed for oneDNN between steps (kumiko/ops/packed_weights.h).
#include "kumiko/ops/packed_weights.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>

#include "kernels/cpu/bf16_convert.h"
#include "kernels/cpu/bf16_dot.h"
#include "kernels/cpu/onednn/matmul_bf16_onednn.h"
#include "kernels/cpu/packed_b.h"
#include "kumiko/core/error.h"

namespace kumiko::cpu {

namespace {

using Buffer = std::unique_ptr<bf16, void (*)(void*)>;

std::atomic<int64_t> g_products{0}, g_whole{0}, g_pieces{0};

Buffer zeroed(int64_t elements) {
  const size_t bytes = (static_cast<size_t>(elements) * sizeof(bf16) + 63) / 64 * 64;
  auto* p = static_cast<bf16*>(std::aligned_alloc(64, bytes));
  KUMIKO_CHECK(p != nullptr, "packed weights: cannot allocate ", bytes, " bytes");
  std::memset(static_cast<void*>(p), 0, bytes);
  return Buffer(p, std::free);
}

}  // namespace

struct PackedWeights::Entry {
  const bf16* w = nullptr;  // the bf16 working copy W [out, in]
  int64_t in = 0, out = 0;
  int64_t N = 0;            // the rows of the linear its layouts were asked for
  PackedB fwd, dx;  // B = Wᵀ (forward), B = W (input gradient)
  Buffer fwd_data{nullptr, std::free}, dx_data{nullptr, std::free};
  uint64_t generation = 0;  // of the working copy it was packed from
  bool dropped = false;     // no packed copies (no layout, or oneDNN declined its rows)

  void drop() {
    dropped = true;
    fwd_data.reset();
    dx_data.reset();
  }
  // W's rows r0 <= r < r1 into both copies (r0 a multiple of fwd.nb).
  void pack(int64_t r0, int64_t r1) {
    pack_b_transposed_rows(fwd, fwd_data.get(), w, in, r0, r1);
    pack_b_rows(dx, dx_data.get(), w, in, r0, r1);
  }
  void pack_all() {
    g_whole.fetch_add(1, std::memory_order_relaxed);
    const int64_t blocks = (out + fwd.nb - 1) / fwd.nb;
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < blocks; ++b) pack(b * fwd.nb, std::min(out, (b + 1) * fwd.nb));
  }
};

bool PackedWeights::supported() {
  static const bool ok = detail::kHaveDpbf16 && onednn::packed_b(256, 256, 256, true);
  return ok;
}

PackedWeights::Counts PackedWeights::counts() {
  return {g_products.load(), g_whole.load(), g_pieces.load()};
}

PackedWeights::PackedWeights() = default;
PackedWeights::~PackedWeights() = default;

PackedWeights::Entry* PackedWeights::find(const bf16* w, int64_t N, int64_t in, int64_t out) {
  auto it = entries_.find(w);
  if (it == entries_.end()) {
    auto e = std::make_unique<Entry>();
    e->w = w, e->in = in, e->out = out, e->N = N;
    e->fwd = onednn::packed_b(N, out, in, true);
    e->dx = onednn::packed_b(N, in, out, true);
    if (e->fwd && e->dx) {
      e->fwd_data = zeroed(e->fwd.elements());
      e->dx_data = zeroed(e->dx.elements());
    } else {
      e->drop();
    }
    it = entries_.emplace(w, std::move(e)).first;
  }
  Entry* e = it->second.get();
  if (e->dropped || e->in != in || e->out != out) return nullptr;
  if (e->generation != generation_) {
    e->pack_all();
    e->generation = generation_;
  }
  return e;
}

namespace {

// A product on a packed copy, counted; declined where the copies were made for these
// rows, the weight is dropped (no use keeping copies AdamW would pack for nothing).
bool counted(bool ran, PackedWeights::Entry& e, int64_t N);

}  // namespace

bool PackedWeights::forward(bf16* y, const bf16* x, const bf16* w, const bf16* b, int64_t N, int64_t in,
                            int64_t out) {
  Entry* e = find(w, N, in, out);
  return e && counted(onednn::matmul_packed(N, x, in, e->fwd, e->fwd_data.get(), b, false, y, out), *e, N);
}

bool PackedWeights::input_gradient(bf16* dx, bool accumulate, const bf16* dy, const bf16* w, int64_t N, int64_t in,
                                   int64_t out) {
  Entry* e = find(w, N, in, out);
  return e && counted(onednn::matmul_packed(N, dy, out, e->dx, e->dx_data.get(), nullptr, accumulate, dx, in), *e, N);
}

namespace {

bool counted(bool ran, PackedWeights::Entry& e, int64_t N) {
  if (ran)
    g_products.fetch_add(1, std::memory_order_relaxed);
  else if (N == e.N)
    e.drop();
  return ran;
}

}  // namespace

void PackedWeights::attach(std::vector<AdamWSlice<float>>& slices) {
  ++generation_;
  pending_.clear();
  if (sharded_) return;  // narrow() packs every weight after the gather
  for (auto& s : slices) {
    if (!s.work || s.n <= 0) continue;
    auto it = entries_.find(s.work);
    if (it == entries_.end()) continue;
    Entry* e = it->second.get();
    // A slice that is not one weight whole leaves it stale: packed again at next use.
    if (e->dropped || e->in * e->out != s.n) continue;
    s.align = e->fwd.nb * e->in;
    s.after = [](void* ctx, int64_t a, int64_t b) {
      auto* en = static_cast<Entry*>(ctx);
      en->pack(a / en->in, b / en->in);
      g_pieces.fetch_add(1, std::memory_order_relaxed);
    };
    s.ctx = e;
    pending_.push_back(e);
  }
}

void PackedWeights::updated() {
  for (Entry* e : pending_) e->generation = generation_;
  pending_.clear();
}

void PackedWeights::invalidate() { ++generation_; }

void PackedWeights::narrow(bf16* work, const float* master, int64_t n) {
  ++generation_;
  // Pieces in address order: each packed weight lying wholly inside in whole nb-row
  // blocks of about kAdamWPiece elements (as AdamW's pieces), the stretches between
  // weights in kAdamWPiece elements.
  struct Piece {
    int64_t begin, end;  // elements of work
    Entry* e;            // the weight it is rows of (r = (begin - offset) / in), or none
  };
  std::vector<Piece> pieces;
  auto plain = [&](int64_t a, int64_t b) {
    for (; a < b; a += kAdamWPiece) pieces.push_back({a, std::min(b, a + kAdamWPiece), nullptr});
  };
  int64_t at = 0;
  for (auto it = entries_.lower_bound(work); it != entries_.end() && it->first < work + n; ++it) {
    Entry* e = it->second.get();
    const int64_t begin = e->w - work, size = e->in * e->out;
    if (e->dropped || begin + size > n || begin < at) continue;  // partly outside: packed again at next use
    plain(at, begin);
    const int64_t piece = std::max<int64_t>(1, kAdamWPiece / (e->fwd.nb * e->in)) * e->fwd.nb * e->in;
    for (int64_t a = 0; a < size; a += piece) pieces.push_back({begin + a, begin + std::min(size, a + piece), e});
    e->generation = generation_;
    at = begin + size;
  }
  plain(at, n);
  const auto np = static_cast<int64_t>(pieces.size());
  int64_t packed = 0;
#pragma omp parallel for schedule(dynamic, 1) reduction(+ : packed)
  for (int64_t j = 0; j < np; ++j) {
    const Piece& p = pieces[static_cast<size_t>(j)];
#pragma omp simd
    for (int64_t i = p.begin; i < p.end; ++i) work[i] = detail::narrow1(master[i]);
    if (p.e) {
      const int64_t offset = p.e->w - work;
      p.e->pack((p.begin - offset) / p.e->in, (p.end - offset) / p.e->in);
      ++packed;
    }
  }
  g_pieces.fetch_add(packed, std::memory_order_relaxed);
}

size_t PackedWeights::bytes() const {
  size_t total = 0;
  for (const auto& [w, e] : entries_)
    if (!e->dropped) total += static_cast<size_t>(e->fwd.elements() + e->dx.elements()) * sizeof(bf16);
  return total;
}

size_t PackedWeights::bytes_for(int64_t N, int64_t in, int64_t out) {
  if (!supported()) return 0;
  const PackedB fwd = onednn::packed_b(N, out, in, true), dx = onednn::packed_b(N, in, out, true);
  return fwd && dx ? static_cast<size_t>(fwd.elements() + dx.elements()) * sizeof(bf16) : 0;
}

}  // namespace kumiko::cpu
