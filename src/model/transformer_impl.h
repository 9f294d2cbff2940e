#pragma once
// BasicTransformer<Backend>'s member definitions: the one model, included by the
// files that instantiate it for a backend (src/model/transformer.cpp for the CPU,
// src/gpu/engine_cuda.cpp for CUDA). Every op goes through the backend; the
// tensor-parallel collectives go through the backend's stream-aware collectives.
#include <algorithm>
#include <cmath>
#include <string>
#include <type_traits>

#include "kumiko/model/transformer.h"

namespace kumiko::model {

template <typename B>
struct BasicTransformer<B>::Activations {
  // N = batch * seq_len tokens; Ns = N / tp with sequence parallelism, else N
  // (the rows of the residual stream this rank holds). Local widths: W = qkv
  // width, A = Hq*D, F and V divided by tp.
  std::vector<Act*> residual;  // L+1 x [Ns, C]: input of each block, then the output
  std::vector<Act*> mid;       // L x [Ns, C]: residual after attention
  std::vector<Act*> ln1, ln2;  // L x [N, C]: normalized inputs of attention / MLP (full sequence)
  std::vector<Stat*> mean1, rstd1, mean2, rstd2;  // L x [Ns]
  std::vector<Act*> qkv;       // L x [N, W], q and k after RoPE
  std::vector<Act*> att;       // L x [N, A]
  std::vector<Stat*> lse;      // L x [B, Hq/tp, T]
  std::vector<Act*> h1, h2, hact;  // L x [N, F]: fc / gate (pre-activation), (llama) up, activation
  Act* lnf = nullptr;          // [N, C]
  Stat *meanf = nullptr, *rstdf = nullptr;  // [Ns]
  Act* logits = nullptr;       // [N, V], overwritten by dlogits in backward
  Stat* losses = nullptr;      // [N]
  Stat* ce = nullptr;          // [3N] scratch: vocab-parallel max, sum, target logit
  Act* full = nullptr;         // [N, C] scratch: row-parallel partial sums, gathered gradients
  Act* shard = nullptr;        // [Ns, C] scratch: norm output / reduced gradient shard
  int32_t *ids = nullptr, *targets = nullptr;  // [N] token ids where the kernels read them
  // Backward scratch.
  Act *dres = nullptr, *dln = nullptr, *datt = nullptr, *dqkv = nullptr, *dh1 = nullptr, *dh2 = nullptr,
      *dact = nullptr;  // [Ns, C] [N, C] [N, A] [N, W] [N, F] x3
};

template <typename B>
struct BasicTransformer<B>::Index {
  std::vector<BlockIndex> blocks;  // [L]; only the stage's layers are filled in
  int tokens = -1, positions = -1, normf_w = -1, normf_b = -1, head = -1;
};

template <typename B>
bool BasicTransformer<B>::starts_model(int chunk) const {
  return stage_.chunks[chunk].first == 0 && stage_.has_embedding;
}
template <typename B>
bool BasicTransformer<B>::ends_model(int chunk) const {
  return stage_.chunks[chunk].second == dims_.L && stage_.has_head;
}

template <typename B>
BasicTransformer<B>::BasicTransformer(const Dims& dims, int64_t batch, int64_t seq_len, TensorParallel tp,
                                      PipelineStage stage, B* backend, Recompute recompute)
    : dims_(dims), recompute_(recompute), tp_(tp), stage_(std::move(stage)), batch_(batch), seq_len_(seq_len),
      index_(std::make_unique<Index>()) {
  if (!backend) {
    own_backend_ = std::make_unique<B>();
    backend = own_backend_.get();
  }
  backend_ = backend;
  const Dims& d = dims_;
  const int n = tp_.size();
  if (stage_.chunks.empty()) stage_.chunks = {{0, d.L}};
  KUMIKO_CHECK(stage_.slots >= 1, "pipeline stage needs at least one activation slot");
  KUMIKO_CHECK(d.llama || seq_len <= d.max_T, "seq_len ", seq_len, " > max_seq_len ", d.max_T);
  KUMIKO_USER_CHECK(!tp_.sequence_parallel || (batch * seq_len) % n == 0,
                    "parallel.sequence_parallel: micro_batch x seq_len = ", batch * seq_len,
                    " tokens must be divisible by parallel.tp = ", n);
  for (auto& spec : parameter_specs(d, n, tp_.rank(), &stage_)) params_.declare(std::move(spec));
  params_.allocate();
  std::vector<ParameterSpec> specs;
  for (size_t i = 0; i < params_.size(); ++i) specs.push_back(params_.spec(static_cast<int>(i)));
  int64_t total = 0;
  offsets_ = flat_offsets<T>(specs, &total);

  auto& ix = *index_;
  auto idx = [&](const std::string& name) { return params_.contains(name) ? params_.index(name) : -1; };
  ix.tokens = idx("embed.tokens.weight");
  ix.positions = idx("embed.positions.weight");
  ix.normf_w = idx("final_norm.weight");
  ix.normf_b = idx("final_norm.bias");
  ix.head = d.tied ? ix.tokens : idx("head.weight");
  for (int64_t l = 0; l < d.L; ++l) ix.blocks.push_back(block_index(l, idx));

  backend_->prepare(d, batch, seq_len, n, params_.total_numel());
  // Plan twice: count, then carve the backend's one block.
  const BufferLayout lay = layout();
  Arena sizing;
  Buffers counted;
  plan(sizing, lay, counted);
  arena_bytes_ = sizing.used();
  Arena arena(backend_->allocate(arena_bytes_), arena_bytes_);
  Buffers buf;
  plan(arena, lay, buf);
  KUMIKO_CHECK(arena.used() == arena_bytes_, "the arena's two planning passes disagree");
  stash_ = std::move(buf.stash);
  acts_ = std::move(buf.acts);
  if constexpr (B::kHost) {
    static_assert(std::is_same_v<Act, Grad>, "a host backend trains on its master weights");
    master_ = params_.flat_values().data();
    work_ = master_;
    grads_ = params_.flat_grads().data();
  } else {
    master_ = buf.master;
    grads_ = buf.grads;
    work_ = buf.work;
    upload_parameters();
    zero_grads();
  }
}

template <typename B>
BufferLayout BasicTransformer<B>::layout() const {
  BufferLayout l;
  l.dims = dims_;
  l.batch = batch_;
  l.seq_len = seq_len_;
  l.tp = tp_.size();
  l.tp_rank = tp_.rank();
  l.sequence_parallel = tp_.sequence_parallel;
  l.stage = stage_;
  l.recompute = recompute_;
  return l;
}

template <typename B>
ArenaPlan BasicTransformer<B>::plan_arena(const BufferLayout& layout) {
  Arena sizing;
  Buffers buf;
  plan(sizing, layout, buf);
  ArenaPlan p;
  p.total = sizing.used();
  p.parameters = sizing.used(Arena::parameters);
  p.gradients = sizing.used(Arena::gradients);
  p.activations = sizing.used(Arena::activations);
  p.workspace = sizing.used(Arena::workspace);
  // Every slot of a chunk is the same size: one slot of each chunk.
  Arena one;
  BufferLayout single = layout;
  single.stage.slots = 1;
  Buffers b1;
  plan(one, single, b1);
  p.per_slot = one.used(Arena::activations);
  return p;
}

template <typename B>
void BasicTransformer<B>::plan(Arena& ar, const BufferLayout& lay, Buffers& out) {
  const Dims& d = lay.dims;
  const int n = lay.tp;
  PipelineStage stage = lay.stage;
  if (stage.chunks.empty()) stage.chunks = {{0, d.L}};
  const auto specs = parameter_specs(d, n, lay.tp_rank, &stage);
  int64_t P = 0;
  flat_offsets<T>(specs, &P);
  if constexpr (!B::kHost) {
    out.master = ar.take<Grad>(P, Arena::parameters);
    out.grads = ar.take<Grad>(P, Arena::gradients);
    if constexpr (std::is_same_v<Act, Grad>)
      out.work = out.master;
    else
      out.work = ar.take<Act>(P, Arena::parameters);
  }
  // Sequence parallelism: room to set aside the replicated tensors' gradients.
  out.stash.assign(specs.size(), nullptr);
  if (lay.sequence_parallel && n > 1)
    for (size_t i = 0; i < specs.size(); ++i)
      if (specs[i].split == Split::none && specs[i].name != "embed.positions.weight")
        out.stash[i] = ar.take<Grad>(numel_of(specs[i].local_shape()), Arena::gradients);

  const bool sp = lay.sequence_parallel && n > 1;
  const int64_t N = lay.batch * lay.seq_len, Ns = lay.sequence_parallel ? N / n : N, C = d.C;
  const int64_t F = d.F / n, W = d.qkv_width() / n, A = d.Hq / n * d.D, V = d.V / n;
  const int64_t lse_n = lay.batch * (d.Hq / n) * lay.seq_len;
  const bool full = lay.recompute == Recompute::full, any = lay.recompute != Recompute::none;
  constexpr auto kAct = Arena::activations, kWs = Arena::workspace;

  // Shared by every layer, chunk and slot: backward's scratch, the sequence-parallel
  // scratch, and one layer of whatever is recomputed (its `ln` holds ln1 or ln2).
  Activations ws;
  Act* ln = any ? ar.take<Act>(N * C, kWs) : nullptr;
  Act* hact = any ? ar.take<Act>(N * F, kWs) : nullptr;
  if (full) {
    ws.mid = {ar.take<Act>(Ns * C, kWs)};
    for (auto* v : {&ws.mean1, &ws.rstd1, &ws.mean2, &ws.rstd2}) *v = {ar.take<Stat>(Ns, kWs)};
    ws.qkv = {ar.take<Act>(N * W, kWs)};
    ws.att = {ar.take<Act>(N * A, kWs)};
    ws.lse = {ar.take<Stat>(lse_n, kWs)};
    ws.h1 = {ar.take<Act>(N * F, kWs)};
    ws.h2 = {d.llama ? ar.take<Act>(N * F, kWs) : nullptr};
  }
  if (sp) {  // only sequence parallelism uses these
    ws.full = ar.take<Act>(N * C, kWs);
    ws.shard = ar.take<Act>(Ns * C, kWs);
  }
  ws.dln = ar.take<Act>(N * C, kWs);
  ws.datt = ar.take<Act>(N * A, kWs);
  ws.dqkv = ar.take<Act>(N * W, kWs);
  ws.dh1 = ar.take<Act>(N * F, kWs);
  ws.dh2 = d.llama ? ar.take<Act>(N * F, kWs) : nullptr;
  ws.dact = ar.take<Act>(N * F, kWs);

  out.acts.clear();
  for (size_t c = 0; c < stage.chunks.size(); ++c) {
    const int64_t layers = stage.chunks[c].second - stage.chunks[c].first;
    const bool head = stage.chunks[c].second == d.L && stage.has_head;
    out.acts.emplace_back();
    for (int slot = 0; slot < stage.slots; ++slot) {
      auto act = std::make_unique<Activations>();
      auto& a = *act;
      // Kept from forward to backward, or recomputed into the shared layer (decided by
      // the mode, not by the pointer: a counting arena hands out nullptr).
      auto keep = [&](bool shared, auto* buffer, int64_t count) {
        using X = std::remove_pointer_t<decltype(buffer)>;
        return shared ? buffer : ar.take<X>(count, kAct);
      };
      for (int64_t l = 0; l <= layers; ++l) a.residual.push_back(ar.take<Act>(Ns * C, kAct));
      for (int64_t l = 0; l < layers; ++l) {
        a.mid.push_back(keep(full, full ? ws.mid[0] : nullptr, Ns * C));
        a.ln1.push_back(keep(any, ln, N * C));
        a.ln2.push_back(keep(any, ln, N * C));
        a.mean1.push_back(keep(full, full ? ws.mean1[0] : nullptr, Ns));
        a.rstd1.push_back(keep(full, full ? ws.rstd1[0] : nullptr, Ns));
        a.mean2.push_back(keep(full, full ? ws.mean2[0] : nullptr, Ns));
        a.rstd2.push_back(keep(full, full ? ws.rstd2[0] : nullptr, Ns));
        a.qkv.push_back(keep(full, full ? ws.qkv[0] : nullptr, N * W));
        a.att.push_back(keep(full, full ? ws.att[0] : nullptr, N * A));
        a.lse.push_back(keep(full, full ? ws.lse[0] : nullptr, lse_n));
        a.h1.push_back(keep(full, full ? ws.h1[0] : nullptr, N * F));
        a.h2.push_back(d.llama ? keep(full, full ? ws.h2[0] : nullptr, N * F) : nullptr);
        a.hact.push_back(keep(any, hact, N * F));
      }
      if (head) {
        a.lnf = ar.take<Act>(N * C, kAct);
        a.meanf = ar.take<Stat>(Ns, kAct);
        a.rstdf = ar.take<Stat>(Ns, kAct);
        a.logits = ar.take<Act>(N * V, kAct);
        a.losses = ar.take<Stat>(N, kAct);
        a.ce = ar.take<Stat>(3 * N, kAct);
      }
      a.ids = ar.take<int32_t>(N, kAct);
      a.targets = ar.take<int32_t>(N, kAct);
      a.dres = ar.take<Act>(Ns * C, kAct);  // the input gradient a pipeline stage sends
      a.full = ws.full;
      a.shard = ws.shard;
      a.dln = ws.dln;
      a.datt = ws.datt;
      a.dqkv = ws.dqkv;
      a.dh1 = ws.dh1;
      a.dh2 = ws.dh2;
      a.dact = ws.dact;
      out.acts.back().push_back(std::move(act));
    }
  }
}

template <typename B>
BasicTransformer<B>::~BasicTransformer() = default;

template <typename B>
void BasicTransformer<B>::download_parameters() {
  if constexpr (!B::kHost) backend_->to_host(params_.flat_values().data(), master_, flat_size());
}

template <typename B>
void BasicTransformer<B>::upload_parameters() {
  if constexpr (!B::kHost) {
    backend_->from_host(master_, params_.flat_values().data(), flat_size());
    backend_->refresh_work(work_, master_, flat_size());
  }
}

template <typename B>
void BasicTransformer<B>::download_grads() {
  if constexpr (!B::kHost) backend_->to_host(params_.flat_grads().data(), grads_, flat_size());
}

template <typename B>
void BasicTransformer<B>::zero_grads() {
  if constexpr (B::kLazyGradZero) {
    if (grads_zeroed_) {  // the padding between parameters is never written: zero once
      unwritten_.assign(params_.size(), 1);
      return;
    }
    grads_zeroed_ = true;
  }
  backend_->zero(grads_, flat_size());
}

template <typename B>
void BasicTransformer<B>::settle_grads() {
  for (size_t i = 0; i < unwritten_.size(); ++i) gr(static_cast<int>(i));
}

template <typename B>
auto BasicTransformer<B>::gr(int i) -> Grad* {
  if (i < 0) return nullptr;
  Grad* g = grads_ + offsets_[i];
  if (!unwritten_.empty() && unwritten_[i]) {
    backend_->zero(g, params_.numel(i));
    unwritten_[i] = 0;
  }
  return g;
}

template <typename B>
auto BasicTransformer<B>::gw(int i) -> std::pair<Grad*, bool> {
  const bool first = !unwritten_.empty() && unwritten_[i];
  if (first) unwritten_[i] = 0;
  return {grads_ + offsets_[i], first};
}

template <typename B>
auto BasicTransformer<B>::shapes(int64_t Bn, int64_t Tn) const -> Shapes {
  const Dims& d = dims_;
  const int n = tp_.size();
  const bool sp = tp_.sequence_parallel;
  const int64_t N = Bn * Tn;
  KUMIKO_CHECK(!sp || N % n == 0, "sequence parallelism needs N % tp == 0");
  return {n, sp, N, sp ? N / n : N, d.C, d.F / n, d.qkv_width() / n, d.Hq / n * d.D, d.V / n, d.Hq / n, d.Hkv / n};
}

template <typename B>
void BasicTransformer<B>::row_parallel(Activations& a, const Shapes& s, Act* out, const Act* x, int w, int bias,
                                       int64_t in) {
  // Input features split over tp: partial sums reduced over tp (all-reduce, or
  // reduce-scatter along the sequence), then the replicated bias.
  B& be = *backend_;
  if (s.n == 1) return be.linear(out, x, wt(w), wt(bias), s.N, in, s.C);
  if (s.sp) {
    be.linear(a.full, x, wt(w), nullptr, s.N, in, s.C);
    scatter_sequence_sum(a.full, out, s.N, s.C);
  } else {
    be.linear(out, x, wt(w), nullptr, s.N, in, s.C);
    tp_sum(out, s.N * s.C);
  }
  if (bias >= 0) be.add_bias(out, wt(bias), s.Ns, s.C);
}

template <typename B>
void BasicTransformer<B>::norm(Activations& a, const Shapes& s, Act* out, Stat* mean, Stat* rstd, const Act* x,
                               int w, int b) {
  Act* dst = s.sp ? a.shard : out;
  backend_->norm_forward(dims_.llama, dst, mean, rstd, x, wt(w), wt(b), s.Ns, s.C, dims_.eps);
  if (s.sp) gather_sequence(dst, out, s.N, s.C);
}

template <typename B>
void BasicTransformer<B>::block_forward(Activations& a, const Shapes& s, int64_t l, int64_t j, int64_t Bn,
                                        int64_t Tn, int64_t pos0, Act* out) {
  const Dims& d = dims_;
  B& be = *backend_;
  const BlockIndex& b = index_->blocks[l];
  const auto [n, sp, N, Ns, C, F, W, A, V, Hq, Hkv] = s;
  const Act* x = a.residual[j];  // [Ns, C]
  // Attention branch: column-parallel qkv (heads split), row-parallel projection.
  norm(a, s, a.ln1[j], a.mean1[j], a.rstd1[j], x, b.norm1_w, b.norm1_b);
  be.linear(a.qkv[j], a.ln1[j], wt(b.qkv_w), wt(b.qkv_b), N, C, W);
  if (pos0 >= 0) {
    // Decoding one token: RoPE at its position, its key and value appended to the
    // cache, attention of its query over every cached position.
    if (d.llama) be.rope_at(a.qkv[j], pos0, Hq, Hkv, d.D, d.rope_theta);
    const int64_t kv = Hkv * d.D;
    be.copy(k_cache_[l] + pos0 * kv, a.qkv[j] + Hq * d.D, kv);
    be.copy(v_cache_[l] + pos0 * kv, a.qkv[j] + Hq * d.D + kv, kv);
    be.attention_decode(a.att[j], a.qkv[j], k_cache_[l], v_cache_[l], pos0 + 1, Hq, Hkv, d.D);
  } else {
    if (d.llama) be.rope_forward(a.qkv[j], Bn, Tn, Hq, Hkv, d.D, d.rope_theta);
    be.attention_forward(a.att[j], a.lse[j], a.qkv[j], Bn, Tn, Hq, Hkv, d.D);
  }
  Act* mid = a.mid[j];  // [Ns, C]
  row_parallel(a, s, mid, a.att[j], b.proj_w, b.proj_b, A);
  be.add_inplace(mid, x, Ns * C);
  // MLP branch: column-parallel up-projection(s), row-parallel down-projection.
  norm(a, s, a.ln2[j], a.mean2[j], a.rstd2[j], mid, b.norm2_w, b.norm2_b);
  if (d.llama) {
    be.linear(a.h1[j], a.ln2[j], wt(b.gate_w), nullptr, N, C, F);
    be.linear(a.h2[j], a.ln2[j], wt(b.up_w), nullptr, N, C, F);
    be.swiglu_forward(a.hact[j], a.h1[j], a.h2[j], N * F);
  } else {
    be.linear(a.hact[j], a.ln2[j], wt(b.fc_w), wt(b.fc_b), N, C, F, /*gelu_pre=*/a.h1[j]);
  }
  if (!out) return;  // recomputation: backward needs nothing past the MLP activation
  row_parallel(a, s, out, a.hact[j], d.llama ? b.down_w : b.mproj_w, d.llama ? -1 : b.mproj_b, F);
  be.add_inplace(out, mid, Ns * C);
}

template <typename B>
void BasicTransformer<B>::forward(int chunk, int slot, const int32_t* inputs, int64_t Bn, int64_t Tn,
                                  const Act* input, int64_t pos0) {
  const bool decoding = pos0 >= 0;
  KUMIKO_CHECK(Bn <= batch_ && Tn <= seq_len_, "micro-batch [", Bn, ", ", Tn, "] exceeds [", batch_, ", ",
               seq_len_, "]");
  const Dims& d = dims_;
  B& be = *backend_;
  auto& a = *acts_[chunk][slot];
  const auto& ix = *index_;
  const auto [first_layer, last_layer] = stage_.chunks[chunk];
  const Shapes s = shapes(Bn, Tn);
  const auto [n, sp, N, Ns, C, F, W, A, V, Hq, Hkv] = s;

  // Embedding: vocab-parallel lookup (+ learned positions for gpt2); a later
  // pipeline stage starts from the previous stage's output instead.
  Act* x0 = a.residual[0];  // [Ns, C]
  if (!starts_model(chunk)) {
    KUMIKO_CHECK(input != nullptr, "pipeline stage without its input activation");
    be.copy(x0, input, Ns * C);
  } else {
    check_ids(inputs, N, "token");
    const int32_t* ids = be.tokens(a.ids, inputs, N);
    if (n == 1) {
      be.embed(x0, ids, wt(ix.tokens), N, C, 0, d.V, d.V);
    } else {
      Act* dst = sp ? a.full : x0;  // [N, C] partial: rows of tokens this rank's shard holds
      be.embed(dst, ids, wt(ix.tokens), N, C, tp_.rank() * V, V, d.V);
      if (sp)
        scatter_sequence_sum(dst, x0, N, C);
      else
        tp_sum(dst, N * C);
    }
    if (ix.positions >= 0) {
      if (decoding)
        be.add_positions(x0, wt(ix.positions), pos0, 1, d.max_T, C);
      else
        be.add_positions(x0, wt(ix.positions), sp ? tp_.rank() * Ns : 0, Ns, Tn, C);
    }
  }

  for (int64_t l = first_layer; l < last_layer; ++l) {
    const int64_t j = l - first_layer;  // the layer's index inside this chunk
    block_forward(a, s, l, j, Bn, Tn, pos0, a.residual[j + 1]);
  }

  if (!ends_model(chunk)) return;
  norm(a, s, a.lnf, a.meanf, a.rstdf, a.residual[last_layer - first_layer], ix.normf_w, ix.normf_b);
  // Vocab-parallel head: this rank's logits [N, V/tp].
  be.linear(a.logits, a.lnf, wt(ix.head), nullptr, N, C, V);
}

template <typename B>
void BasicTransformer<B>::backward(int chunk, int slot, const int32_t* inputs, int64_t Bn, int64_t Tn,
                                   const Act* output_grad) {
  const Dims& d = dims_;
  B& be = *backend_;
  auto& a = *acts_[chunk][slot];
  const auto& ix = *index_;
  const auto [first_layer, last_layer] = stage_.chunks[chunk];
  const Shapes s = shapes(Bn, Tn);
  const auto [n, sp, N, Ns, C, F, W, A, V, Hq, Hkv] = s;

  // A linear's backward: dx (+)= dy W; weight w's gradient written by the GEMM, which
  // overwrites it if this is its first write of the step (see zero_grads()).
  auto linear_backward = [&](Act* dx, bool accumulate_dx, int w, Grad* db, const Act* dy, const Act* x,
                             int64_t rows, int64_t in, int64_t out) {
    const auto [dw, overwrite] = gw(w);
    be.linear_backward(dx, accumulate_dx, dw, overwrite, db, dy, x, wt(w), rows, in, out);
  };
  // The gradient w.r.t. a row-parallel output, for the whole sequence [N, C].
  auto full_grad = [&]() -> const Act* {
    if (!sp) return a.dres;
    gather_sequence(a.dres, a.full, N, C);
    return a.full;
  };
  // Backward of a row-parallel linear whose output gradient is dres: input
  // gradient dx [N, in] (overwritten), weight gradient, replicated bias gradient.
  auto row_parallel_backward = [&](Act* dx, const Act* x, int w, int bias, int64_t in) {
    const Act* dy = full_grad();
    if (n == 1) return linear_backward(dx, false, w, gr(bias), dy, x, N, in, C);
    linear_backward(dx, false, w, nullptr, dy, x, N, in, C);
    if (bias >= 0) be.bias_backward(gr(bias), a.dres, Ns, C);
  };
  // The gradient w.r.t. the normalized input (dln [N, C], partial over tp after a
  // column-parallel layer), reduced and backpropagated through the norm into dres.
  auto norm_backward_into_dres = [&](const Act* x, int w, int b, const Stat* mean, const Stat* rstd) {
    Act* dn = a.dln;
    if (sp) {
      scatter_sequence_sum(dn, a.shard, N, C);
      dn = a.shard;
    } else if (n > 1) {
      tp_sum(dn, N * C);
    }
    be.norm_backward(d.llama, a.dres, gr(w), gr(b), dn, x, wt(w), mean, rstd, Ns, C);
  };
  // With sequence parallelism the replicated parameters see only this rank's tokens:
  // their gradient from this micro-batch is summed over tp. Earlier micro-batches'
  // (already summed) gradients are set aside first and added back after the sum.
  auto stash_replicated = [&](std::initializer_list<int> indices) {
    if (!sp) return;
    for (int i : indices) {
      if (i < 0) continue;
      be.copy(stash_[i], gr(i), params_.numel(i));
      be.zero(gr(i), params_.numel(i));
    }
  };
  auto reduce_replicated = [&](std::initializer_list<int> indices) {
    if (!sp) return;
    for (int i : indices) {
      if (i < 0) continue;
      tp_sum(gr(i), params_.numel(i));
      be.add_inplace(gr(i), stash_[i], params_.numel(i));
    }
  };

  if (ends_model(chunk)) {
    // Head: a.logits holds dlogits [N, V/tp] here.
    stash_replicated({ix.normf_w, ix.normf_b});
    linear_backward(a.dln, false, ix.head, nullptr, a.logits, a.lnf, N, C, V);
    be.zero(a.dres, Ns * C);
    norm_backward_into_dres(a.residual[last_layer - first_layer], ix.normf_w, ix.normf_b, a.meanf, a.rstdf);
    reduce_replicated({ix.normf_w, ix.normf_b});
    notify({ix.normf_w, ix.normf_b, d.tied ? -1 : ix.head});
  } else {
    // A later pipeline stage sent the gradient w.r.t. this chunk's output.
    KUMIKO_CHECK(output_grad != nullptr, "pipeline stage without its output gradient");
    be.copy(a.dres, output_grad, Ns * C);
  }

  for (int64_t l = last_layer - 1; l >= first_layer; --l) {
    const BlockIndex& b = ix.blocks[l];
    const int64_t j = l - first_layer;
    // Recomputation: the layer's forward again from its input (full), or its MLP
    // activation and second norm's output (selective), before they are read. The
    // same kernels on the same inputs: the same bits as the first forward.
    if (recompute_ == Recompute::full) {
      block_forward(a, s, l, j, Bn, Tn, -1, nullptr);
    } else if (recompute_ == Recompute::selective) {
      norm(a, s, a.ln2[j], a.mean2[j], a.rstd2[j], a.mid[j], b.norm2_w, b.norm2_b);
      if (d.llama)
        be.swiglu_forward(a.hact[j], a.h1[j], a.h2[j], N * F);
      else
        be.gelu_forward(a.hact[j], a.h1[j], N * F);
    }
    stash_replicated({b.norm1_w, b.norm1_b, b.norm2_w, b.norm2_b, b.proj_b, b.mproj_b});
    // dres is the gradient w.r.t. the block output = w.r.t. mid (residual) + MLP output.
    if (d.llama) {
      row_parallel_backward(a.dact, a.hact[j], b.down_w, -1, F);
      be.swiglu_backward(a.dh1, a.dh2, a.dact, a.h1[j], a.h2[j], N * F);
      linear_backward(a.dln, false, b.gate_w, nullptr, a.dh1, a.ln2[j], N, C, F);
      linear_backward(a.dln, true, b.up_w, nullptr, a.dh2, a.ln2[j], N, C, F);
    } else {
      row_parallel_backward(a.dact, a.hact[j], b.mproj_w, b.mproj_b, F);
      be.gelu_backward(a.dh1, a.dact, a.h1[j], N * F);
      linear_backward(a.dln, false, b.fc_w, gr(b.fc_b), a.dh1, a.ln2[j], N, C, F);
    }
    norm_backward_into_dres(a.mid[j], b.norm2_w, b.norm2_b, a.mean2[j], a.rstd2[j]);
    // dres is now the gradient w.r.t. mid = x + proj(att).
    row_parallel_backward(a.datt, a.att[j], b.proj_w, b.proj_b, A);
    be.attention_backward(a.dqkv, a.datt, a.qkv[j], a.att[j], a.lse[j], Bn, Tn, Hq, Hkv, d.D);
    if (d.llama) be.rope_backward(a.dqkv, Bn, Tn, Hq, Hkv, d.D, d.rope_theta);
    // ln1 shares its buffer with ln2 when recomputing: the first norm's output again.
    if (recompute_ != Recompute::none) norm(a, s, a.ln1[j], a.mean1[j], a.rstd1[j], a.residual[j], b.norm1_w, b.norm1_b);
    linear_backward(a.dln, false, b.qkv_w, gr(b.qkv_b), a.dqkv, a.ln1[j], N, C, W);
    norm_backward_into_dres(a.residual[j], b.norm1_w, b.norm1_b, a.mean1[j], a.rstd1[j]);
    reduce_replicated({b.norm1_w, b.norm1_b, b.norm2_w, b.norm2_b, b.proj_b, b.mproj_b});
    notify({b.norm1_w, b.norm1_b, b.qkv_w, b.qkv_b, b.proj_w, b.proj_b, b.norm2_w, b.norm2_b, b.fc_w, b.fc_b,
            b.mproj_w, b.mproj_b, b.gate_w, b.up_w, b.down_w});
  }

  // a.dres now holds the gradient w.r.t. the chunk's input (sent to the previous
  // pipeline stage) unless the chunk starts the model.
  if (!starts_model(chunk)) return;
  // Embedding: the gradient of the whole sequence reaches every rank's vocabulary shard.
  const Act* dx0 = full_grad();  // [N, C]
  if (ix.positions >= 0) be.positions_backward(gr(ix.positions), dx0, Bn, Tn, C);
  be.embed_backward(gr(ix.tokens), dx0, inputs, N, C, n == 1 ? 0 : tp_.rank() * V, n == 1 ? d.V : V, d.V);
  notify({ix.tokens, ix.positions});
}

template <typename B>
void BasicTransformer<B>::check_ids(const int32_t* ids, int64_t n, const char* what) const {
  // The kernels index tables with these: a bad id must never reach them.
  for (int64_t i = 0; i < n; ++i)
    KUMIKO_USER_CHECK(ids[i] >= 0 && ids[i] < dims_.V, what, " id ", ids[i], " at position ", i,
                      " is outside the vocabulary [0, ", dims_.V, ") of model.vocab_size");
}

template <typename B>
void BasicTransformer<B>::notify(std::initializer_list<int> indices) {
  if (!grad_ready_) return;
  for (int i : indices)
    if (i >= 0) grad_ready_(i);
}

template <typename B>
template <typename X>
void BasicTransformer<B>::tp_sum(X* x, int64_t n) {
  if (tp_.size() > 1) backend_->all_reduce(*tp_.group, x, n, comm::ReduceOp::sum);
}

template <typename B>
void BasicTransformer<B>::gather_sequence(const Act* shard, Act* full, int64_t N, int64_t C) {
  const int n = tp_.size();
  const int64_t rows = N / n;
  backend_->copy(full + tp_.rank() * rows * C, shard, rows * C);
  backend_->all_gather(*tp_.group, full, std::vector<int64_t>(n, rows * C));
}

template <typename B>
void BasicTransformer<B>::scatter_sequence_sum(Act* full, Act* shard, int64_t N, int64_t C) {
  const int n = tp_.size();
  backend_->reduce_scatter(*tp_.group, full, shard, std::vector<int64_t>(n, N / n * C));
}

template <typename B>
double BasicTransformer<B>::vocab_parallel_cross_entropy(Activations& a, const int32_t* targets, int64_t N,
                                                         bool backward, double scale) {
  B& be = *backend_;
  const int64_t V = dims_.V / tp_.size();
  check_ids(targets, N, "target");
  const int32_t* tgt = be.tokens(a.targets, targets, N);
  if (tp_.size() == 1) {
    be.cross_entropy(a.losses, a.logits, tgt, N, V, backward, scale);
  } else {
    // Megatron's vocab-parallel cross-entropy: the row maximum, the sum of
    // exponentials and the target's logit are reduced over the tp group; no rank
    // ever holds the full [N, V] logits.
    const int64_t v0 = tp_.rank() * V;
    Stat* mx = a.ce;
    Stat* sum = mx + N;
    Stat* target_logit = sum + N;
    be.ce_row_max(mx, a.logits, N, V);
    be.all_reduce(*tp_.group, mx, N, comm::ReduceOp::max);
    be.ce_sums(sum, target_logit, a.logits, mx, tgt, N, V, v0);
    be.all_reduce(*tp_.group, sum, 2 * N, comm::ReduceOp::sum);  // sums and target logits together
    be.ce_finish(a.losses, a.logits, mx, sum, target_logit, tgt, N, V, v0, backward, scale);
  }
  return be.sum(a.losses, N);
}

template <typename B>
double BasicTransformer<B>::forward_backward(const int32_t* inputs, const int32_t* targets, int64_t Bn,
                                             int64_t Tn, double loss_scale) {
  KUMIKO_CHECK(num_chunks() == 1 && starts_model(0) && ends_model(0), "forward_backward needs the whole model");
  forward(0, 0, inputs, Bn, Tn, nullptr);
  const double sum = vocab_parallel_cross_entropy(*acts_[0][0], targets, Bn * Tn, true, loss_scale);
  backward(0, 0, inputs, Bn, Tn, nullptr);
  settle_grads();
  return sum / static_cast<double>(Bn * Tn);
}

template <typename B>
double BasicTransformer<B>::loss(const int32_t* inputs, const int32_t* targets, int64_t Bn, int64_t Tn) {
  KUMIKO_CHECK(num_chunks() == 1 && starts_model(0) && ends_model(0), "loss needs the whole model");
  forward(0, 0, inputs, Bn, Tn, nullptr);
  return vocab_parallel_cross_entropy(*acts_[0][0], targets, Bn * Tn, false, 0.0) / static_cast<double>(Bn * Tn);
}

template <typename B>
double BasicTransformer<B>::stage_forward(int chunk, int slot, const int32_t* inputs, const int32_t* targets,
                                          int64_t Bn, int64_t Tn, double loss_scale, const Act* input, bool train) {
  forward(chunk, slot, inputs, Bn, Tn, input);
  if (!ends_model(chunk)) return 0.0;
  return vocab_parallel_cross_entropy(*acts_[chunk][slot], targets, Bn * Tn, train, loss_scale);
}

template <typename B>
auto BasicTransformer<B>::stage_output(int chunk, int slot) const -> const Act* {
  return acts_[chunk][slot]->residual.back();
}

template <typename B>
void BasicTransformer<B>::stage_backward(int chunk, int slot, const int32_t* inputs, int64_t Bn, int64_t Tn,
                                         const Act* output_grad) {
  backward(chunk, slot, inputs, Bn, Tn, output_grad);
}

template <typename B>
auto BasicTransformer<B>::stage_input_grad(int chunk, int slot) const -> const Act* {
  return acts_[chunk][slot]->dres;
}

template <typename B>
int64_t BasicTransformer<B>::activation_rows(int64_t Bn, int64_t Tn) const {
  return tp_.sequence_parallel ? Bn * Tn / tp_.size() : Bn * Tn;
}

template <typename B>
void BasicTransformer<B>::begin_decoding(int64_t capacity) {
  const Dims& d = dims_;
  KUMIKO_CHECK(tp_.size() == 1 && num_chunks() == 1 && starts_model(0) && ends_model(0),
               "decoding needs the whole model on one rank");
  KUMIKO_CHECK(d.llama || capacity <= d.max_T, "decoder capacity ", capacity, " > max_seq_len ", d.max_T);
  if (capacity > decode_capacity_) {
    const int64_t n = capacity * d.Hkv * d.D;
    Arena sizing;
    for (int64_t l = 0; l < 2 * d.L; ++l) sizing.take<Act>(n);
    Arena ar(backend_->allocate(sizing.used()), sizing.used());
    k_cache_.assign(static_cast<size_t>(d.L), nullptr);
    v_cache_.assign(static_cast<size_t>(d.L), nullptr);
    for (int64_t l = 0; l < d.L; ++l) {
      k_cache_[l] = ar.take<Act>(n);
      v_cache_[l] = ar.take<Act>(n);
    }
    decode_capacity_ = capacity;
  }
  decode_pos_ = 0;
}

template <typename B>
void BasicTransformer<B>::decode(int32_t token, T* logits) {
  KUMIKO_CHECK(decode_pos_ < decode_capacity_, "KV cache full (", decode_capacity_, " positions)");
  forward(0, 0, &token, 1, 1, nullptr, decode_pos_);
  ++decode_pos_;
  const auto& a = *acts_[0][0];
  std::vector<Act> row(static_cast<size_t>(dims_.V));
  backend_->to_host(row.data(), a.logits, dims_.V);
  for (int64_t v = 0; v < dims_.V; ++v) logits[v] = static_cast<T>(row[static_cast<size_t>(v)]);
}

template <typename B>
void BasicTransformer<B>::last_logits(const int32_t* inputs, int64_t Bn, int64_t Tn, T* out) {
  KUMIKO_CHECK(num_chunks() == 1 && starts_model(0) && ends_model(0), "last_logits needs the whole model");
  static_assert(std::is_same_v<Act, T> || !B::kHost);
  forward(0, 0, inputs, Bn, Tn, nullptr);
  const auto& a = *acts_[0][0];
  const int n = tp_.size();
  KUMIKO_CHECK(n == 1 || B::kHost, "last_logits with tensor parallelism needs a host backend");
  const int64_t V = dims_.V / n;
  // This rank's vocabulary columns of each sequence's last row, then gathered.
  std::vector<Act> mine(static_cast<size_t>(n * Bn * V));
  for (int64_t b = 0; b < Bn; ++b)
    backend_->to_host(mine.data() + tp_.rank() * Bn * V + b * V, a.logits + ((b * Tn) + Tn - 1) * V, V);
  if constexpr (B::kHost)
    if (n > 1) tp_.group->all_gather(mine.data(), std::vector<int64_t>(n, Bn * V));
  for (int r = 0; r < n; ++r)
    for (int64_t b = 0; b < Bn; ++b)
      for (int64_t v = 0; v < V; ++v)
        out[b * dims_.V + r * V + v] = static_cast<T>(mine[static_cast<size_t>(r * Bn * V + b * V + v)]);
}

}  // namespace kumiko::model
