#include "kumiko/model/transformer.h"

#include <algorithm>
#include <cmath>

#include "kumiko/ops/attention.h"
#include "kumiko/ops/cross_entropy.h"
#include "kumiko/ops/elementwise.h"
#include "kumiko/ops/embedding.h"
#include "kumiko/ops/gelu.h"
#include "kumiko/ops/layernorm.h"
#include "kumiko/ops/linear.h"
#include "kumiko/ops/rmsnorm.h"
#include "kumiko/ops/rope.h"
#include "kumiko/ops/swiglu.h"

namespace kumiko::model {

Dims Dims::from(const config::ModelConfig& m) {
  Dims d;
  d.llama = m.arch == "llama";
  d.L = m.n_layers;
  d.Hq = m.n_heads;
  d.Hkv = m.kv_heads();
  d.D = m.head_dim();
  d.C = m.d_model;
  d.F = m.ff_dim();
  d.V = m.vocab_size;
  d.max_T = m.max_seq_len;
  d.tied = m.tie_embeddings;
  d.eps = m.norm_eps;
  d.rope_theta = m.rope_theta;
  d.init_std = m.init_std;
  return d;
}

PipelineStage pipeline_stage(const Dims& d, int pp, int chunks, int rank, const std::vector<int64_t>& layers,
                             int slots) {
  const int stages = pp * chunks;
  std::vector<int64_t> counts = layers;
  if (counts.empty()) counts.assign(stages, d.L / stages);
  KUMIKO_CHECK(static_cast<int>(counts.size()) == stages, "pipeline: ", counts.size(), " stage sizes for ",
               stages, " stages");
  std::vector<int64_t> begin(stages + 1, 0);
  for (int s = 0; s < stages; ++s) begin[s + 1] = begin[s] + counts[s];
  KUMIKO_CHECK(begin[stages] == d.L, "pipeline stages cover ", begin[stages], " of ", d.L, " layers");
  PipelineStage st;
  for (int c = 0; c < chunks; ++c) {
    const int s = c * pp + rank;
    st.chunks.push_back({begin[s], begin[s + 1]});
  }
  st.has_embedding = rank == 0;
  st.has_head = rank == pp - 1;
  st.slots = slots;
  return st;
}

std::vector<ParameterSpec> parameter_specs(const Dims& d, int tp, int rank, const PipelineStage* stage) {
  if (stage && !stage->chunks.empty()) {
    // This stage's part of the full list, in the same order.
    auto all = parameter_specs(d, tp, rank, nullptr);
    std::vector<ParameterSpec> mine;
    for (auto& spec : all) {
      const std::string& n = spec.name;
      bool keep = false;
      if (n.rfind("blocks.", 0) == 0) {
        const int64_t l = std::stoll(n.substr(7, n.find('.', 7) - 7));
        for (const auto& [a, b] : stage->chunks) keep = keep || (l >= a && l < b);
      } else if (n == "embed.tokens.weight") {
        keep = stage->has_embedding || (stage->has_head && d.tied);
      } else if (n == "embed.positions.weight") {
        keep = stage->has_embedding;
      } else {  // final_norm.*, head.weight
        keep = stage->has_head;
      }
      if (keep) mine.push_back(std::move(spec));
    }
    return mine;
  }
  KUMIKO_CHECK(tp >= 1 && rank >= 0 && rank < tp, "bad tp rank ", rank, " of ", tp);
  KUMIKO_USER_CHECK(d.Hq % tp == 0 && d.Hkv % tp == 0 && d.F % tp == 0 && d.V % tp == 0,
                    "parallel.tp = ", tp, " must divide model.n_heads (", d.Hq, "), the kv heads (", d.Hkv,
                    "), the MLP width (", d.F, ") and model.vocab_size (", d.V, ")");
  std::vector<ParameterSpec> specs;
  const float std = static_cast<float>(d.init_std);
  // Residual-branch output projections are scaled down by sqrt(2L) (GPT-2).
  const float out_std = static_cast<float>(d.init_std / std::sqrt(2.0 * static_cast<double>(d.L)));
  const bool bias = !d.llama;
  const bool split = tp > 1;
  using Ranges = std::vector<std::pair<int64_t, int64_t>>;
  auto rows_of = [&](int64_t n) { return Ranges{{rank * (n / tp), (rank + 1) * (n / tp)}}; };
  // The q, k and v heads of this rank: three row ranges of the packed qkv tensor.
  const int64_t ql = d.Hq / tp * d.D, kl = d.Hkv / tp * d.D;
  const Ranges qkv_rows = {{rank * ql, (rank + 1) * ql},
                           {d.Hq * d.D + rank * kl, d.Hq * d.D + (rank + 1) * kl},
                           {(d.Hq + d.Hkv) * d.D + rank * kl, (d.Hq + d.Hkv) * d.D + (rank + 1) * kl}};
  auto add = [&](std::string name, Shape shape, Init init, float s, bool decay) -> ParameterSpec& {
    ParameterSpec spec;
    spec.name = std::move(name);
    spec.shape = std::move(shape);
    spec.init = init;
    spec.std = s;
    spec.decay = decay;
    specs.push_back(std::move(spec));
    return specs.back();
  };
  auto by_rows = [&](ParameterSpec& p, Ranges r) {
    if (!split) return;
    p.split = Split::rows;
    p.row_ranges = std::move(r);
  };
  auto by_cols = [&](ParameterSpec& p, int64_t n) {
    if (!split) return;
    p.split = Split::cols;
    p.col_begin = rank * (n / tp);
    p.col_end = (rank + 1) * (n / tp);
  };
  auto norm = [&](const std::string& prefix) {
    add(prefix + ".weight", {d.C}, Init::ones, 0, false);
    if (bias) add(prefix + ".bias", {d.C}, Init::zeros, 0, false);
  };
  // Column-parallel: output features split (rows of the weight, and the bias).
  auto column = [&](const std::string& prefix, int64_t out, int64_t in, float s, const Ranges& rows) {
    by_rows(add(prefix + ".weight", {out, in}, Init::normal, s, true), rows);
    if (bias) by_rows(add(prefix + ".bias", {out}, Init::zeros, 0, false), rows);
  };
  // Row-parallel: input features split (columns of the weight); the bias is replicated.
  auto row = [&](const std::string& prefix, int64_t out, int64_t in, float s) {
    by_cols(add(prefix + ".weight", {out, in}, Init::normal, s, true), in);
    if (bias) add(prefix + ".bias", {out}, Init::zeros, 0, false);
  };
  by_rows(add("embed.tokens.weight", {d.V, d.C}, Init::normal, std, false), rows_of(d.V));
  if (!d.llama) add("embed.positions.weight", {d.max_T, d.C}, Init::normal, std * 0.5f, false);
  for (int64_t l = 0; l < d.L; ++l) {
    const std::string p = "blocks." + std::to_string(l);
    norm(p + ".norm1");
    column(p + ".attn.qkv", d.qkv_width(), d.C, std, qkv_rows);
    row(p + ".attn.proj", d.C, d.Hq * d.D, out_std);
    norm(p + ".norm2");
    if (d.llama) {
      column(p + ".mlp.gate", d.F, d.C, std, rows_of(d.F));
      column(p + ".mlp.up", d.F, d.C, std, rows_of(d.F));
      row(p + ".mlp.down", d.C, d.F, out_std);
    } else {
      column(p + ".mlp.fc", d.F, d.C, std, rows_of(d.F));
      row(p + ".mlp.proj", d.C, d.F, out_std);
    }
  }
  norm("final_norm");
  if (!d.tied) by_rows(add("head.weight", {d.V, d.C}, Init::normal, std, true), rows_of(d.V));
  return specs;
}

double train_flops_per_token(const Dims& d, int64_t T) {
  // Parameters that take part in a matmul per token: every block linear and the head.
  const double block = static_cast<double>(d.C) * d.qkv_width() + static_cast<double>(d.Hq * d.D) * d.C +
                       (d.llama ? 3.0 : 2.0) * static_cast<double>(d.C) * d.F;
  const double n_matmul = block * d.L + static_cast<double>(d.V) * d.C;
  return 6.0 * n_matmul + 12.0 * d.L * d.Hq * d.D * static_cast<double>(T);
}

BlockIndex block_index(int64_t layer, const std::function<int(const std::string&)>& idx) {
  const std::string p = "blocks." + std::to_string(layer);
  BlockIndex b;
  b.norm1_w = idx(p + ".norm1.weight");
  b.norm1_b = idx(p + ".norm1.bias");
  b.qkv_w = idx(p + ".attn.qkv.weight");
  b.qkv_b = idx(p + ".attn.qkv.bias");
  b.proj_w = idx(p + ".attn.proj.weight");
  b.proj_b = idx(p + ".attn.proj.bias");
  b.norm2_w = idx(p + ".norm2.weight");
  b.norm2_b = idx(p + ".norm2.bias");
  b.fc_w = idx(p + ".mlp.fc.weight");
  b.fc_b = idx(p + ".mlp.fc.bias");
  b.mproj_w = idx(p + ".mlp.proj.weight");
  b.mproj_b = idx(p + ".mlp.proj.bias");
  b.gate_w = idx(p + ".mlp.gate.weight");
  b.up_w = idx(p + ".mlp.up.weight");
  b.down_w = idx(p + ".mlp.down.weight");
  return b;
}

template <typename T>
struct Transformer<T>::Activations {
  // N = batch * seq_len tokens; Ns = N / tp with sequence parallelism, else N
  // (the rows of the residual stream this rank holds). Local widths: W = qkv
  // width, A = Hq*D, F and V divided by tp.
  std::vector<Tensor<T>> residual;  // L+1 x [Ns, C]: input of each block, then the output
  std::vector<Tensor<T>> mid;       // L x [Ns, C]: residual after attention
  std::vector<Tensor<T>> ln1, ln2;  // L x [N, C]: normalized inputs of attention / MLP (full sequence)
  std::vector<Tensor<T>> mean1, rstd1, mean2, rstd2;  // L x [Ns]
  std::vector<Tensor<T>> qkv;       // L x [N, W], q and k after RoPE
  std::vector<Tensor<T>> att;       // L x [N, A]
  std::vector<Tensor<T>> lse;       // L x [B, Hq/tp, T]
  std::vector<Tensor<T>> h1, h2, hact;  // L x [N, F]: fc / gate, (llama) up, activation
  Tensor<T> lnf, meanf, rstdf;      // [N, C], [Ns], [Ns]
  Tensor<T> logits;                 // [N, V], overwritten by dlogits in backward
  Tensor<T> losses;                 // [N]
  Tensor<T> full;                   // [N, C] scratch: row-parallel partial sums, gathered gradients
  Tensor<T> shard;                  // [Ns, C] scratch: norm output / reduced gradient shard
  Tensor<T> ce;                     // [3N] scratch: vocab-parallel max, sum, target logit
  // Backward scratch.
  Tensor<T> dres, dln, datt, dqkv, dh1, dh2, dact;  // [Ns, C] [N, C] [N, A] [N, W] [N, F] x3
};

template <typename T>
struct Transformer<T>::Index {
  std::vector<BlockIndex> blocks;  // [L]; only the stage's layers are filled in
  int tokens = -1, positions = -1, normf_w = -1, normf_b = -1, head = -1;
};

template <typename T>
bool Transformer<T>::starts_model(int chunk) const {
  return stage_.chunks[chunk].first == 0 && stage_.has_embedding;
}
template <typename T>
bool Transformer<T>::ends_model(int chunk) const {
  return stage_.chunks[chunk].second == dims_.L && stage_.has_head;
}

template <typename T>
Transformer<T>::Transformer(const Dims& dims, int64_t batch, int64_t seq_len, TensorParallel tp,
                            PipelineStage stage)
    : dims_(dims), tp_(tp), stage_(std::move(stage)), batch_(batch), seq_len_(seq_len),
      index_(std::make_unique<Index>()) {
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

  auto& ix = *index_;
  auto idx = [&](const std::string& name) { return params_.contains(name) ? params_.index(name) : -1; };
  ix.tokens = idx("embed.tokens.weight");
  ix.positions = idx("embed.positions.weight");
  ix.normf_w = idx("final_norm.weight");
  ix.normf_b = idx("final_norm.bias");
  ix.head = d.tied ? ix.tokens : idx("head.weight");
  for (int64_t l = 0; l < d.L; ++l) ix.blocks.push_back(block_index(l, idx));

  const int64_t N = batch * seq_len, Ns = tp_.sequence_parallel ? N / n : N, C = d.C;
  const int64_t F = d.F / n, W = d.qkv_width() / n, A = d.Hq / n * d.D, V = d.V / n;
  for (int c = 0; c < num_chunks(); ++c) {
    const int64_t layers = stage_.chunks[c].second - stage_.chunks[c].first;
    const bool head = ends_model(c);
    acts_.emplace_back();
    for (int slot = 0; slot < stage_.slots; ++slot) {
      auto act = std::make_unique<Activations>();
      auto& a = *act;
      for (int64_t l = 0; l <= layers; ++l) a.residual.emplace_back(Shape{Ns, C});
      for (int64_t l = 0; l < layers; ++l) {
        a.mid.emplace_back(Shape{Ns, C});
        a.ln1.emplace_back(Shape{N, C});
        a.ln2.emplace_back(Shape{N, C});
        a.mean1.emplace_back(Shape{Ns});
        a.rstd1.emplace_back(Shape{Ns});
        a.mean2.emplace_back(Shape{Ns});
        a.rstd2.emplace_back(Shape{Ns});
        a.qkv.emplace_back(Shape{N, W});
        a.att.emplace_back(Shape{N, A});
        a.lse.emplace_back(Shape{batch, d.Hq / n, seq_len});
        a.h1.emplace_back(Shape{N, F});
        a.h2.emplace_back(d.llama ? Shape{N, F} : Shape{0});
        a.hact.emplace_back(Shape{N, F});
      }
      if (head) {
        a.lnf = Tensor<T>({N, C});
        a.meanf = Tensor<T>({Ns});
        a.rstdf = Tensor<T>({Ns});
        a.logits = Tensor<T>({N, V});
        a.losses = Tensor<T>({N});
        a.ce = Tensor<T>({3 * N});
      }
      a.full = Tensor<T>({N, C});
      a.shard = Tensor<T>({Ns, C});
      a.dres = Tensor<T>({Ns, C});
      a.dln = Tensor<T>({N, C});
      a.datt = Tensor<T>({N, A});
      a.dqkv = Tensor<T>({N, W});
      a.dh1 = Tensor<T>({N, F});
      a.dh2 = Tensor<T>({N, F});
      a.dact = Tensor<T>({N, F});
      acts_.back().push_back(std::move(act));
    }
  }
}

template <typename T>
Transformer<T>::~Transformer() = default;

namespace {
template <typename T>
const T* maybe(const ParameterStore<T>& p, int i) {
  return i < 0 ? nullptr : p.value(i);
}
template <typename T>
T* maybe_grad(ParameterStore<T>& p, int i) {
  return i < 0 ? nullptr : p.grad(i);
}

// Normalization of the architecture: LayerNorm (gpt2, saves mean and rstd) or
// RMSNorm (llama, saves rstd).
template <typename T>
void norm_forward(bool llama, T* out, T* mean, T* rstd, const T* x, const T* w, const T* b,
                  int64_t N, int64_t C, double eps) {
  if (llama)
    cpu::rmsnorm_forward(out, rstd, x, w, N, C, static_cast<T>(eps));
  else
    cpu::layernorm_forward(out, mean, rstd, x, w, b, N, C, static_cast<T>(eps));
}
template <typename T>
void norm_backward(bool llama, T* dx, T* dw, T* db, const T* dout, const T* x, const T* w,
                   const T* mean, const T* rstd, int64_t N, int64_t C) {
  if (llama)
    cpu::rmsnorm_backward(dx, dw, dout, x, w, rstd, N, C);
  else
    cpu::layernorm_backward(dx, dw, db, dout, x, w, mean, rstd, N, C);
}
template <typename T>
void zero(T* x, int64_t n) {
  std::fill(x, x + n, T(0));
}
}  // namespace

template <typename T>
void Transformer<T>::forward(int chunk, int slot, const int32_t* inputs, int64_t B, int64_t Tn,
                             const T* input) {
  KUMIKO_CHECK(B <= batch_ && Tn <= seq_len_, "micro-batch [", B, ", ", Tn, "] exceeds [", batch_,
               ", ", seq_len_, "]");
  const Dims& d = dims_;
  auto& a = *acts_[chunk][slot];
  const auto& ix = *index_;
  auto& p = params_;
  const auto [first_layer, last_layer] = stage_.chunks[chunk];
  const int n = tp_.size();
  const bool sp = tp_.sequence_parallel;
  const int64_t N = B * Tn, Ns = sp ? N / n : N, C = d.C;
  KUMIKO_CHECK(!sp || N % n == 0, "sequence parallelism needs N % tp == 0");
  const int64_t F = d.F / n, W = d.qkv_width() / n, A = d.Hq / n * d.D, V = d.V / n, Hq = d.Hq / n,
                Hkv = d.Hkv / n;

  // Runs a row-parallel linear (input features split over tp) into out [Ns, C]:
  // partial sums reduced over tp (all-reduce, or reduce-scatter along the sequence),
  // then the replicated bias.
  auto row_parallel = [&](T* out, const T* x, int w, int bias, int64_t in) {
    if (n == 1) return cpu::linear_forward(out, x, p.value(w), maybe(p, bias), N, in, C);
    if (sp) {
      cpu::linear_forward(a.full.data(), x, p.value(w), (const T*)nullptr, N, in, C);
      scatter_sequence_sum(a.full.data(), out, N, C);
    } else {
      cpu::linear_forward(out, x, p.value(w), (const T*)nullptr, N, in, C);
      tp_sum(out, N * C);
    }
    if (bias >= 0) cpu::add_positions_forward(out, p.value(bias), Ns, int64_t{1}, C);
  };
  // Normalizes rows x [Ns, C] into out [N, C] (gathered along the sequence with sp).
  auto norm = [&](T* out, T* mean, T* rstd, const T* x, int w, int b) {
    T* dst = sp ? a.shard.data() : out;
    norm_forward(d.llama, dst, mean, rstd, x, p.value(w), maybe(p, b), Ns, C, d.eps);
    if (sp) gather_sequence(dst, out, N, C);
  };

  // Embedding: vocab-parallel lookup (+ learned positions for gpt2); a later
  // pipeline stage starts from the previous stage's output instead.
  T* x0 = a.residual[0].data();  // [Ns, C]
  if (!starts_model(chunk)) {
    KUMIKO_CHECK(input != nullptr, "pipeline stage without its input activation");
    std::copy_n(input, Ns * C, x0);
  } else if (n == 1) {
    cpu::embedding_forward(x0, inputs, p.value(ix.tokens), N, C);
  } else {
    const int64_t v0 = tp_.rank() * V;
    T* dst = sp ? a.full.data() : x0;  // [N, C] partial: rows of tokens this rank's shard holds
    for (int64_t i = 0; i < N; ++i) {
      const int64_t id = inputs[i] - v0;
      if (id >= 0 && id < V)
        std::copy_n(p.value(ix.tokens) + id * C, C, dst + i * C);
      else
        zero(dst + i * C, C);
    }
    if (sp)
      scatter_sequence_sum(dst, x0, N, C);
    else
      tp_sum(dst, N * C);
  }
  if (starts_model(chunk) && ix.positions >= 0) {
    const int64_t first = sp ? tp_.rank() * Ns : 0;  // global token index of row 0
    for (int64_t i = 0; i < Ns; ++i)
      cpu::add_inplace(x0 + i * C, p.value(ix.positions) + ((first + i) % Tn) * C, C);
  }

  for (int64_t l = first_layer; l < last_layer; ++l) {
    const BlockIndex& b = ix.blocks[l];
    const int64_t j = l - first_layer;  // the layer's index inside this chunk
    const T* x = a.residual[j].data();  // [Ns, C]
    // Attention branch: column-parallel qkv (heads split), row-parallel projection.
    norm(a.ln1[j].data(), a.mean1[j].data(), a.rstd1[j].data(), x, b.norm1_w, b.norm1_b);
    cpu::linear_forward(a.qkv[j].data(), a.ln1[j].data(), p.value(b.qkv_w), maybe(p, b.qkv_b), N, C, W);
    if (d.llama) cpu::rope_forward(a.qkv[j].data(), B, Tn, Hq, Hkv, d.D, d.rope_theta);
    cpu::attention_forward(a.att[j].data(), a.lse[j].data(), a.qkv[j].data(), B, Tn, Hq, Hkv, d.D);
    T* mid = a.mid[j].data();  // [Ns, C]
    row_parallel(mid, a.att[j].data(), b.proj_w, b.proj_b, A);
    cpu::add_inplace(mid, x, Ns * C);
    // MLP branch: column-parallel up-projection(s), row-parallel down-projection.
    norm(a.ln2[j].data(), a.mean2[j].data(), a.rstd2[j].data(), mid, b.norm2_w, b.norm2_b);
    T* out = a.residual[j + 1].data();  // [Ns, C]
    if (d.llama) {
      cpu::linear_forward(a.h1[j].data(), a.ln2[j].data(), p.value(b.gate_w), (const T*)nullptr, N, C, F);
      cpu::linear_forward(a.h2[j].data(), a.ln2[j].data(), p.value(b.up_w), (const T*)nullptr, N, C, F);
      cpu::swiglu_forward(a.hact[j].data(), a.h1[j].data(), a.h2[j].data(), N * F);
      row_parallel(out, a.hact[j].data(), b.down_w, -1, F);
    } else {
      cpu::linear_forward(a.h1[j].data(), a.ln2[j].data(), p.value(b.fc_w), maybe(p, b.fc_b), N, C, F);
      cpu::gelu_forward(a.hact[j].data(), a.h1[j].data(), N * F);
      row_parallel(out, a.hact[j].data(), b.mproj_w, b.mproj_b, F);
    }
    cpu::add_inplace(out, mid, Ns * C);
  }

  if (!ends_model(chunk)) return;
  norm(a.lnf.data(), a.meanf.data(), a.rstdf.data(), a.residual[last_layer - first_layer].data(), ix.normf_w,
       ix.normf_b);
  // Vocab-parallel head: this rank's logits [N, V/tp].
  cpu::linear_forward(a.logits.data(), a.lnf.data(), p.value(ix.head), (const T*)nullptr, N, C, V);
}

template <typename T>
void Transformer<T>::backward(int chunk, int slot, const int32_t* inputs, int64_t B, int64_t Tn,
                              const T* output_grad) {
  const Dims& d = dims_;
  auto& a = *acts_[chunk][slot];
  const auto& ix = *index_;
  auto& p = params_;
  const auto [first_layer, last_layer] = stage_.chunks[chunk];
  const int n = tp_.size();
  const bool sp = tp_.sequence_parallel;
  const int64_t N = B * Tn, Ns = sp ? N / n : N, C = d.C;
  const int64_t F = d.F / n, W = d.qkv_width() / n, A = d.Hq / n * d.D, V = d.V / n, Hq = d.Hq / n,
                Hkv = d.Hkv / n;

  // The gradient w.r.t. a row-parallel output, for the whole sequence [N, C].
  auto full_grad = [&]() -> const T* {
    if (!sp) return a.dres.data();
    gather_sequence(a.dres.data(), a.full.data(), N, C);
    return a.full.data();
  };
  // Backward of a row-parallel linear whose output gradient is dres: input
  // gradient dx [N, in] (overwritten), weight gradient, replicated bias gradient.
  auto row_parallel_backward = [&](T* dx, const T* x, int w, int bias, int64_t in) {
    const T* dy = full_grad();
    zero(dx, N * in);
    if (n == 1) return cpu::linear_backward(dx, p.grad(w), maybe_grad(p, bias), dy, x, p.value(w), N, in, C);
    cpu::linear_backward(dx, p.grad(w), (T*)nullptr, dy, x, p.value(w), N, in, C);
    if (bias >= 0) cpu::add_positions_backward(p.grad(bias), a.dres.data(), Ns, int64_t{1}, C);
  };
  // The gradient w.r.t. the normalized input (dln [N, C], partial over tp after a
  // column-parallel layer), reduced and backpropagated through the norm into dres.
  auto norm_backward_into_dres = [&](const T* x, int w, int b, const T* mean, const T* rstd) {
    T* dn = a.dln.data();
    if (sp) {
      scatter_sequence_sum(dn, a.shard.data(), N, C);
      dn = a.shard.data();
    } else if (n > 1) {
      tp_sum(dn, N * C);
    }
    norm_backward(d.llama, a.dres.data(), p.grad(w), maybe_grad(p, b), dn, x, p.value(w), mean, rstd, Ns, C);
  };
  // With sequence parallelism the replicated parameters see only this rank's tokens:
  // their gradient from this micro-batch is summed over tp. Earlier micro-batches'
  // (already summed) gradients are set aside first and added back after the sum.
  auto stash_replicated = [&](std::initializer_list<int> indices) {
    if (!sp) return;
    for (int i : indices) {
      if (i < 0) continue;
      auto& saved = stash_[i];
      saved.assign(p.grad(i), p.grad(i) + p.numel(i));
      zero(p.grad(i), p.numel(i));
    }
  };
  auto reduce_replicated = [&](std::initializer_list<int> indices) {
    if (!sp) return;
    for (int i : indices) {
      if (i < 0) continue;
      tp_sum(p.grad(i), p.numel(i));
      cpu::add_inplace(p.grad(i), stash_[i].data(), p.numel(i));
    }
  };

  if (ends_model(chunk)) {
    // Head: a.logits holds dlogits [N, V/tp] here.
    stash_replicated({ix.normf_w, ix.normf_b});
    zero(a.dln.data(), N * C);
    cpu::linear_backward(a.dln.data(), p.grad(ix.head), (T*)nullptr, a.logits.data(), a.lnf.data(),
                         p.value(ix.head), N, C, V);
    zero(a.dres.data(), Ns * C);
    norm_backward_into_dres(a.residual[last_layer - first_layer].data(), ix.normf_w, ix.normf_b, a.meanf.data(),
                            a.rstdf.data());
    reduce_replicated({ix.normf_w, ix.normf_b});
    notify({ix.normf_w, ix.normf_b, d.tied ? -1 : ix.head});
  } else {
    // A later pipeline stage sent the gradient w.r.t. this chunk's output.
    KUMIKO_CHECK(output_grad != nullptr, "pipeline stage without its output gradient");
    std::copy_n(output_grad, Ns * C, a.dres.data());
  }

  for (int64_t l = last_layer - 1; l >= first_layer; --l) {
    const BlockIndex& b = ix.blocks[l];
    const int64_t j = l - first_layer;
    stash_replicated({b.norm1_w, b.norm1_b, b.norm2_w, b.norm2_b, b.proj_b, b.mproj_b});
    // dres is the gradient w.r.t. the block output = w.r.t. mid (residual) + MLP output.
    if (d.llama) {
      row_parallel_backward(a.dact.data(), a.hact[j].data(), b.down_w, -1, F);
      zero(a.dh1.data(), N * F);
      zero(a.dh2.data(), N * F);
      cpu::swiglu_backward(a.dh1.data(), a.dh2.data(), a.dact.data(), a.h1[j].data(), a.h2[j].data(), N * F);
      zero(a.dln.data(), N * C);
      cpu::linear_backward(a.dln.data(), p.grad(b.gate_w), (T*)nullptr, a.dh1.data(), a.ln2[j].data(),
                           p.value(b.gate_w), N, C, F);
      cpu::linear_backward(a.dln.data(), p.grad(b.up_w), (T*)nullptr, a.dh2.data(), a.ln2[j].data(),
                           p.value(b.up_w), N, C, F);
    } else {
      row_parallel_backward(a.dact.data(), a.hact[j].data(), b.mproj_w, b.mproj_b, F);
      zero(a.dh1.data(), N * F);
      cpu::gelu_backward(a.dh1.data(), a.dact.data(), a.h1[j].data(), N * F);
      zero(a.dln.data(), N * C);
      cpu::linear_backward(a.dln.data(), p.grad(b.fc_w), maybe_grad(p, b.fc_b), a.dh1.data(), a.ln2[j].data(),
                           p.value(b.fc_w), N, C, F);
    }
    norm_backward_into_dres(a.mid[j].data(), b.norm2_w, b.norm2_b, a.mean2[j].data(), a.rstd2[j].data());
    // dres is now the gradient w.r.t. mid = x + proj(att).
    row_parallel_backward(a.datt.data(), a.att[j].data(), b.proj_w, b.proj_b, A);
    zero(a.dqkv.data(), N * W);
    cpu::attention_backward(a.dqkv.data(), a.datt.data(), a.qkv[j].data(), a.att[j].data(), a.lse[j].data(), B,
                            Tn, Hq, Hkv, d.D);
    if (d.llama) cpu::rope_backward(a.dqkv.data(), B, Tn, Hq, Hkv, d.D, d.rope_theta);
    zero(a.dln.data(), N * C);
    cpu::linear_backward(a.dln.data(), p.grad(b.qkv_w), maybe_grad(p, b.qkv_b), a.dqkv.data(), a.ln1[j].data(),
                         p.value(b.qkv_w), N, C, W);
    norm_backward_into_dres(a.residual[j].data(), b.norm1_w, b.norm1_b, a.mean1[j].data(), a.rstd1[j].data());
    reduce_replicated({b.norm1_w, b.norm1_b, b.norm2_w, b.norm2_b, b.proj_b, b.mproj_b});
    notify({b.norm1_w, b.norm1_b, b.qkv_w, b.qkv_b, b.proj_w, b.proj_b, b.norm2_w, b.norm2_b, b.fc_w, b.fc_b,
            b.mproj_w, b.mproj_b, b.gate_w, b.up_w, b.down_w});
  }

  // a.dres now holds the gradient w.r.t. the chunk's input (sent to the previous
  // pipeline stage) unless the chunk starts the model.
  if (!starts_model(chunk)) return;
  // Embedding: the gradient of the whole sequence reaches every rank's vocabulary shard.
  const T* dx0 = full_grad();  // [N, C]
  if (ix.positions >= 0) cpu::add_positions_backward(p.grad(ix.positions), dx0, B, Tn, C);
  if (n == 1) {
    cpu::embedding_backward(p.grad(ix.tokens), dx0, inputs, N, C);
  } else {
    const int64_t v0 = tp_.rank() * V;
    for (int64_t i = 0; i < N; ++i) {
      const int64_t id = inputs[i] - v0;
      if (id >= 0 && id < V) cpu::add_inplace(p.grad(ix.tokens) + id * C, dx0 + i * C, C);
    }
  }
  notify({ix.tokens, ix.positions});
}

template <typename T>
void Transformer<T>::notify(std::initializer_list<int> indices) {
  if (!grad_ready_) return;
  for (int i : indices)
    if (i >= 0) grad_ready_(i);
}

template <typename T>
void Transformer<T>::tp_sum(T* x, int64_t n) {
  if (tp_.size() > 1) tp_.group->all_reduce(x, n, comm::ReduceOp::sum);
}

template <typename T>
void Transformer<T>::gather_sequence(const T* shard, T* full, int64_t N, int64_t C) {
  const int n = tp_.size();
  const int64_t rows = N / n;
  std::copy_n(shard, rows * C, full + tp_.rank() * rows * C);
  tp_.group->all_gather(full, std::vector<int64_t>(n, rows * C));
}

template <typename T>
void Transformer<T>::scatter_sequence_sum(T* full, T* shard, int64_t N, int64_t C) {
  const int n = tp_.size();
  tp_.group->reduce_scatter(full, shard, std::vector<int64_t>(n, N / n * C), comm::ReduceOp::sum);
}

template <typename T>
double Transformer<T>::vocab_parallel_cross_entropy(Activations& a, const int32_t* targets, int64_t N,
                                                    bool backward, T scale) {
  const int64_t V = dims_.V / tp_.size();
  if (tp_.size() == 1) {
    if (backward)
      cpu::cross_entropy_forward_backward(a.losses.data(), a.logits.data(), a.logits.data(), targets, N, V, scale);
    else
      cpu::cross_entropy_forward(a.losses.data(), a.logits.data(), targets, N, V);
  } else {
    // Megatron's vocab-parallel cross-entropy: the row maximum, the sum of
    // exponentials and the target's logit are reduced over the tp group; no rank
    // ever holds the full [N, V] logits.
    const int64_t v0 = tp_.rank() * V;
    T* mx = a.ce.data();
    T* sum = mx + N;
    T* tgt = sum + N;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < N; ++i) {
      const T* row = a.logits.data() + i * V;
      mx[i] = *std::max_element(row, row + V);
    }
    tp_.group->all_reduce(mx, N, comm::ReduceOp::max);
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < N; ++i) {
      const T* row = a.logits.data() + i * V;
      double s = 0;
      for (int64_t j = 0; j < V; ++j) s += std::exp(static_cast<double>(row[j] - mx[i]));
      sum[i] = static_cast<T>(s);
      const int64_t t = targets[i] - v0;
      tgt[i] = t >= 0 && t < V ? row[t] : T(0);
    }
    tp_.group->all_reduce(sum, 2 * N, comm::ReduceOp::sum);  // sums and target logits together
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < N; ++i) {
      a.losses[i] = std::log(sum[i]) + mx[i] - tgt[i];
      if (!backward) continue;
      T* row = a.logits.data() + i * V;
      const int64_t t = targets[i] - v0;
      for (int64_t j = 0; j < V; ++j) row[j] = (std::exp(row[j] - mx[i]) / sum[i] - (j == t ? T(1) : T(0))) * scale;
    }
  }
  double total = 0;
  for (int64_t i = 0; i < N; ++i) total += a.losses[i];
  return total;
}

template <typename T>
double Transformer<T>::forward_backward(const int32_t* inputs, const int32_t* targets, int64_t B,
                                        int64_t Tn, T loss_scale) {
  KUMIKO_CHECK(num_chunks() == 1 && starts_model(0) && ends_model(0), "forward_backward needs the whole model");
  forward(0, 0, inputs, B, Tn, nullptr);
  const double sum = vocab_parallel_cross_entropy(*acts_[0][0], targets, B * Tn, true, loss_scale);
  backward(0, 0, inputs, B, Tn, nullptr);
  return sum / static_cast<double>(B * Tn);
}

template <typename T>
double Transformer<T>::loss(const int32_t* inputs, const int32_t* targets, int64_t B, int64_t Tn) {
  KUMIKO_CHECK(num_chunks() == 1 && starts_model(0) && ends_model(0), "loss needs the whole model");
  forward(0, 0, inputs, B, Tn, nullptr);
  return vocab_parallel_cross_entropy(*acts_[0][0], targets, B * Tn, false, T(0)) / static_cast<double>(B * Tn);
}

template <typename T>
double Transformer<T>::stage_forward(int chunk, int slot, const int32_t* inputs, const int32_t* targets,
                                     int64_t B, int64_t Tn, T loss_scale, const T* input, bool train) {
  forward(chunk, slot, inputs, B, Tn, input);
  if (!ends_model(chunk)) return 0.0;
  return vocab_parallel_cross_entropy(*acts_[chunk][slot], targets, B * Tn, train, loss_scale);
}

template <typename T>
const T* Transformer<T>::stage_output(int chunk, int slot) const {
  const auto& a = *acts_[chunk][slot];
  return a.residual.back().data();
}

template <typename T>
void Transformer<T>::stage_backward(int chunk, int slot, const int32_t* inputs, int64_t B, int64_t Tn,
                                    const T* output_grad) {
  backward(chunk, slot, inputs, B, Tn, output_grad);
}

template <typename T>
const T* Transformer<T>::stage_input_grad(int chunk, int slot) const {
  return acts_[chunk][slot]->dres.data();
}

template <typename T>
int64_t Transformer<T>::activation_rows(int64_t B, int64_t Tn) const {
  return tp_.sequence_parallel ? B * Tn / tp_.size() : B * Tn;
}

template <typename T>
void Transformer<T>::last_logits(const int32_t* inputs, int64_t B, int64_t Tn, T* out) {
  KUMIKO_CHECK(num_chunks() == 1 && starts_model(0) && ends_model(0), "last_logits needs the whole model");
  forward(0, 0, inputs, B, Tn, nullptr);
  const auto& a = *acts_[0][0];
  const int n = tp_.size();
  const int64_t V = dims_.V / n;
  // This rank's vocabulary columns of each sequence's last row, then gathered.
  std::vector<T> mine(static_cast<size_t>(n * B * V));
  for (int64_t b = 0; b < B; ++b) {
    const T* row = a.logits.data() + ((b * Tn) + Tn - 1) * V;
    std::copy(row, row + V, mine.data() + tp_.rank() * B * V + b * V);
  }
  if (n > 1) tp_.group->all_gather(mine.data(), std::vector<int64_t>(n, B * V));
  for (int r = 0; r < n; ++r)
    for (int64_t b = 0; b < B; ++b)
      std::copy_n(mine.data() + r * B * V + b * V, V, out + b * dims_.V + r * V);
}

template class Transformer<float>;
template class Transformer<double>;

}  // namespace kumiko::model
