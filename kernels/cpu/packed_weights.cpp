// Linear weights kept packed for oneDNN between steps (kumiko/ops/packed_weights.h).
#include "kumiko/ops/packed_weights.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>

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
  bool dropped = false;     // no packed copies (no layout, or a ZeRO shard)

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
  for (auto& s : slices) {
    if (!s.work || s.n <= 0 || entries_.empty()) continue;
    const bf16* begin = s.work;
    const bf16* end = s.work + s.n;
    // Entries overlapping [begin, end): the last one starting at or before begin, then on.
    auto it = entries_.upper_bound(begin);
    if (it != entries_.begin()) --it;
    for (; it != entries_.end() && it->first < end; ++it) {
      Entry* e = it->second.get();
      if (e->dropped || e->w + e->in * e->out <= begin) continue;
      if (e->w == begin && e->in * e->out == s.n) {
        s.align = e->fwd.nb * e->in;
        s.after = [](void* ctx, int64_t a, int64_t b) {
          auto* en = static_cast<Entry*>(ctx);
          en->pack(a / en->in, b / en->in);
          g_pieces.fetch_add(1, std::memory_order_relaxed);
        };
        s.ctx = e;
        pending_.push_back(e);
      } else {
        e->drop();  // AdamW updates part of it here (a ZeRO shard): W as it is from now on
      }
    }
  }
}

void PackedWeights::updated() {
  for (Entry* e : pending_) e->generation = generation_;
  pending_.clear();
}

void PackedWeights::invalidate() { ++generation_; }

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
