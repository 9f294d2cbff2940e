#include "kumiko/model/transformer.h"

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

std::vector<ParameterSpec> parameter_specs(const Dims& d) {
  std::vector<ParameterSpec> specs;
  const float std = static_cast<float>(d.init_std);
  // Residual-branch output projections are scaled down by sqrt(2L) (GPT-2).
  const float out_std = static_cast<float>(d.init_std / std::sqrt(2.0 * static_cast<double>(d.L)));
  const bool bias = !d.llama;
  auto add = [&](std::string name, Shape shape, Init init, float s, bool decay) {
    specs.push_back({std::move(name), std::move(shape), init, s, decay});
  };
  auto norm = [&](const std::string& prefix) {
    add(prefix + ".weight", {d.C}, Init::ones, 0, false);
    if (bias) add(prefix + ".bias", {d.C}, Init::zeros, 0, false);
  };
  auto linear = [&](const std::string& prefix, int64_t out, int64_t in, float s) {
    add(prefix + ".weight", {out, in}, Init::normal, s, true);
    if (bias) add(prefix + ".bias", {out}, Init::zeros, 0, false);
  };
  add("embed.tokens.weight", {d.V, d.C}, Init::normal, std, false);
  if (!d.llama) add("embed.positions.weight", {d.max_T, d.C}, Init::normal, std * 0.5f, false);
  for (int64_t l = 0; l < d.L; ++l) {
    const std::string p = "blocks." + std::to_string(l);
    norm(p + ".norm1");
    linear(p + ".attn.qkv", d.qkv_width(), d.C, std);
    linear(p + ".attn.proj", d.C, d.Hq * d.D, out_std);
    norm(p + ".norm2");
    if (d.llama) {
      linear(p + ".mlp.gate", d.F, d.C, std);
      linear(p + ".mlp.up", d.F, d.C, std);
      linear(p + ".mlp.down", d.C, d.F, out_std);
    } else {
      linear(p + ".mlp.fc", d.F, d.C, std);
      linear(p + ".mlp.proj", d.C, d.F, out_std);
    }
  }
  norm("final_norm");
  if (!d.tied) add("head.weight", {d.V, d.C}, Init::normal, std, true);
  return specs;
}

double train_flops_per_token(const Dims& d, int64_t T) {
  // Parameters that take part in a matmul per token: every block linear and the head.
  const double block = static_cast<double>(d.C) * d.qkv_width() + static_cast<double>(d.Hq * d.D) * d.C +
                       (d.llama ? 3.0 : 2.0) * static_cast<double>(d.C) * d.F;
  const double n_matmul = block * d.L + static_cast<double>(d.V) * d.C;
  return 6.0 * n_matmul + 12.0 * d.L * d.Hq * d.D * static_cast<double>(T);
}

namespace {
// Parameter indices of one block; -1 where the architecture has none.
struct BlockIndex {
  int norm1_w = -1, norm1_b = -1, qkv_w = -1, qkv_b = -1, proj_w = -1, proj_b = -1;
  int norm2_w = -1, norm2_b = -1;
  int fc_w = -1, fc_b = -1, mproj_w = -1, mproj_b = -1;  // gpt2
  int gate_w = -1, up_w = -1, down_w = -1;               // llama
};
}  // namespace

template <typename T>
struct Transformer<T>::Activations {
  // N = batch * seq_len tokens at most.
  std::vector<Tensor<T>> residual;  // L+1 x [N, C]: input of each block, then the output
  std::vector<Tensor<T>> mid;       // L x [N, C]: residual after attention
  std::vector<Tensor<T>> ln1, ln2;  // L x [N, C]: normalized inputs of attention / MLP
  std::vector<Tensor<T>> mean1, rstd1, mean2, rstd2;  // L x [N]
  std::vector<Tensor<T>> qkv;       // L x [N, (Hq+2Hkv)*D], q and k after RoPE
  std::vector<Tensor<T>> att;       // L x [N, Hq*D]
  std::vector<Tensor<T>> lse;       // L x [B, Hq, T]
  std::vector<Tensor<T>> h1, h2, hact;  // L x [N, F]: fc / gate, (llama) up, activation
  Tensor<T> lnf, meanf, rstdf;      // [N, C], [N], [N]
  Tensor<T> logits;                 // [N, V], overwritten by dlogits in backward
  Tensor<T> losses;                 // [N]
  // Backward scratch.
  Tensor<T> dres, dln, datt, dqkv, dh1, dh2, dact;  // [N, C] [N, C] [N, HqD] [N, W] [N, F] x3
  std::vector<BlockIndex> blocks;
  int tokens = -1, positions = -1, normf_w = -1, normf_b = -1, head = -1;
};

template <typename T>
Transformer<T>::Transformer(const Dims& dims, int64_t batch, int64_t seq_len)
    : dims_(dims), batch_(batch), seq_len_(seq_len), act_(std::make_unique<Activations>()) {
  const Dims& d = dims_;
  KUMIKO_CHECK(d.llama || seq_len <= d.max_T, "seq_len ", seq_len, " > max_seq_len ", d.max_T);
  for (auto& spec : parameter_specs(d)) params_.declare(std::move(spec));
  params_.allocate();

  auto& a = *act_;
  auto idx = [&](const std::string& name) { return params_.contains(name) ? params_.index(name) : -1; };
  a.tokens = idx("embed.tokens.weight");
  a.positions = idx("embed.positions.weight");
  a.normf_w = idx("final_norm.weight");
  a.normf_b = idx("final_norm.bias");
  a.head = d.tied ? a.tokens : idx("head.weight");
  for (int64_t l = 0; l < d.L; ++l) {
    const std::string p = "blocks." + std::to_string(l);
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
    a.blocks.push_back(b);
  }

  const int64_t N = batch * seq_len, C = d.C, F = d.F, W = d.qkv_width(), A = d.Hq * d.D;
  for (int64_t l = 0; l <= d.L; ++l) a.residual.emplace_back(Shape{N, C});
  for (int64_t l = 0; l < d.L; ++l) {
    a.mid.emplace_back(Shape{N, C});
    a.ln1.emplace_back(Shape{N, C});
    a.ln2.emplace_back(Shape{N, C});
    a.mean1.emplace_back(Shape{N});
    a.rstd1.emplace_back(Shape{N});
    a.mean2.emplace_back(Shape{N});
    a.rstd2.emplace_back(Shape{N});
    a.qkv.emplace_back(Shape{N, W});
    a.att.emplace_back(Shape{N, A});
    a.lse.emplace_back(Shape{batch, d.Hq, seq_len});
    a.h1.emplace_back(Shape{N, F});
    a.h2.emplace_back(d.llama ? Shape{N, F} : Shape{0});
    a.hact.emplace_back(Shape{N, F});
  }
  a.lnf = Tensor<T>({N, C});
  a.meanf = Tensor<T>({N});
  a.rstdf = Tensor<T>({N});
  a.logits = Tensor<T>({N, d.V});
  a.losses = Tensor<T>({N});
  a.dres = Tensor<T>({N, C});
  a.dln = Tensor<T>({N, C});
  a.datt = Tensor<T>({N, A});
  a.dqkv = Tensor<T>({N, W});
  a.dh1 = Tensor<T>({N, F});
  a.dh2 = Tensor<T>({N, F});
  a.dact = Tensor<T>({N, F});
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
}  // namespace

template <typename T>
void Transformer<T>::forward(const int32_t* inputs, int64_t B, int64_t Tn) {
  KUMIKO_CHECK(B <= batch_ && Tn <= seq_len_, "micro-batch [", B, ", ", Tn, "] exceeds [", batch_,
               ", ", seq_len_, "]");
  const Dims& d = dims_;
  auto& a = *act_;
  auto& p = params_;
  const int64_t N = B * Tn, C = d.C, F = d.F, A = d.Hq * d.D;

  // Embedding (+ learned positions for gpt2).
  cpu::embedding_forward(a.residual[0].data(), inputs, p.value(a.tokens), N, C);
  if (a.positions >= 0) cpu::add_positions_forward(a.residual[0].data(), p.value(a.positions), B, Tn, C);

  for (int64_t l = 0; l < d.L; ++l) {
    const BlockIndex& b = a.blocks[l];
    const T* x = a.residual[l].data();  // [N, C]
    // Attention branch.
    norm_forward(d.llama, a.ln1[l].data(), a.mean1[l].data(), a.rstd1[l].data(), x, p.value(b.norm1_w),
                 maybe(p, b.norm1_b), N, C, d.eps);
    cpu::linear_forward(a.qkv[l].data(), a.ln1[l].data(), p.value(b.qkv_w), maybe(p, b.qkv_b), N, C,
                        d.qkv_width());
    if (d.llama) cpu::rope_forward(a.qkv[l].data(), B, Tn, d.Hq, d.Hkv, d.D, d.rope_theta);
    cpu::attention_forward(a.att[l].data(), a.lse[l].data(), a.qkv[l].data(), B, Tn, d.Hq, d.Hkv, d.D);
    T* mid = a.mid[l].data();  // [N, C]
    cpu::linear_forward(mid, a.att[l].data(), p.value(b.proj_w), maybe(p, b.proj_b), N, A, C);
    cpu::add_inplace(mid, x, N * C);
    // MLP branch.
    norm_forward(d.llama, a.ln2[l].data(), a.mean2[l].data(), a.rstd2[l].data(), mid, p.value(b.norm2_w),
                 maybe(p, b.norm2_b), N, C, d.eps);
    T* out = a.residual[l + 1].data();  // [N, C]
    if (d.llama) {
      cpu::linear_forward(a.h1[l].data(), a.ln2[l].data(), p.value(b.gate_w), (const T*)nullptr, N, C, F);
      cpu::linear_forward(a.h2[l].data(), a.ln2[l].data(), p.value(b.up_w), (const T*)nullptr, N, C, F);
      cpu::swiglu_forward(a.hact[l].data(), a.h1[l].data(), a.h2[l].data(), N * F);
      cpu::linear_forward(out, a.hact[l].data(), p.value(b.down_w), (const T*)nullptr, N, F, C);
    } else {
      cpu::linear_forward(a.h1[l].data(), a.ln2[l].data(), p.value(b.fc_w), maybe(p, b.fc_b), N, C, F);
      cpu::gelu_forward(a.hact[l].data(), a.h1[l].data(), N * F);
      cpu::linear_forward(out, a.hact[l].data(), p.value(b.mproj_w), maybe(p, b.mproj_b), N, F, C);
    }
    cpu::add_inplace(out, mid, N * C);
  }

  norm_forward(d.llama, a.lnf.data(), a.meanf.data(), a.rstdf.data(), a.residual[d.L].data(),
               p.value(a.normf_w), maybe(p, a.normf_b), N, C, d.eps);
  cpu::linear_forward(a.logits.data(), a.lnf.data(), p.value(a.head), (const T*)nullptr, N, C, d.V);
}

template <typename T>
void Transformer<T>::backward(const int32_t* inputs, int64_t B, int64_t Tn) {
  const Dims& d = dims_;
  auto& a = *act_;
  auto& p = params_;
  const int64_t N = B * Tn, C = d.C, F = d.F, A = d.Hq * d.D, W = d.qkv_width();
  auto zero = [](Tensor<T>& t, int64_t n) { std::fill(t.data(), t.data() + n, T(0)); };

  // Head: a.logits holds dlogits [N, V] here.
  zero(a.dln, N * C);
  cpu::linear_backward(a.dln.data(), p.grad(a.head), (T*)nullptr, a.logits.data(), a.lnf.data(),
                       p.value(a.head), N, C, d.V);
  zero(a.dres, N * C);
  norm_backward(d.llama, a.dres.data(), p.grad(a.normf_w), maybe_grad(p, a.normf_b), a.dln.data(),
                a.residual[d.L].data(), p.value(a.normf_w), a.meanf.data(), a.rstdf.data(), N, C);
  notify({a.normf_w, a.normf_b, d.tied ? -1 : a.head});

  for (int64_t l = d.L - 1; l >= 0; --l) {
    const BlockIndex& b = a.blocks[l];
    // dres is the gradient w.r.t. the block output = w.r.t. mid (residual) + MLP output.
    zero(a.dact, N * F);
    zero(a.dln, N * C);
    if (d.llama) {
      cpu::linear_backward(a.dact.data(), p.grad(b.down_w), (T*)nullptr, a.dres.data(), a.hact[l].data(),
                           p.value(b.down_w), N, F, C);
      zero(a.dh1, N * F);
      zero(a.dh2, N * F);
      cpu::swiglu_backward(a.dh1.data(), a.dh2.data(), a.dact.data(), a.h1[l].data(), a.h2[l].data(), N * F);
      cpu::linear_backward(a.dln.data(), p.grad(b.gate_w), (T*)nullptr, a.dh1.data(), a.ln2[l].data(),
                           p.value(b.gate_w), N, C, F);
      cpu::linear_backward(a.dln.data(), p.grad(b.up_w), (T*)nullptr, a.dh2.data(), a.ln2[l].data(),
                           p.value(b.up_w), N, C, F);
    } else {
      cpu::linear_backward(a.dact.data(), p.grad(b.mproj_w), maybe_grad(p, b.mproj_b), a.dres.data(),
                           a.hact[l].data(), p.value(b.mproj_w), N, F, C);
      zero(a.dh1, N * F);
      cpu::gelu_backward(a.dh1.data(), a.dact.data(), a.h1[l].data(), N * F);
      cpu::linear_backward(a.dln.data(), p.grad(b.fc_w), maybe_grad(p, b.fc_b), a.dh1.data(),
                           a.ln2[l].data(), p.value(b.fc_w), N, C, F);
    }
    norm_backward(d.llama, a.dres.data(), p.grad(b.norm2_w), maybe_grad(p, b.norm2_b), a.dln.data(),
                  a.mid[l].data(), p.value(b.norm2_w), a.mean2[l].data(), a.rstd2[l].data(), N, C);
    // dres is now the gradient w.r.t. mid = x + proj(att).
    zero(a.datt, N * A);
    cpu::linear_backward(a.datt.data(), p.grad(b.proj_w), maybe_grad(p, b.proj_b), a.dres.data(),
                         a.att[l].data(), p.value(b.proj_w), N, A, C);
    zero(a.dqkv, N * W);
    cpu::attention_backward(a.dqkv.data(), a.datt.data(), a.qkv[l].data(), a.att[l].data(), a.lse[l].data(),
                            B, Tn, d.Hq, d.Hkv, d.D);
    if (d.llama) cpu::rope_backward(a.dqkv.data(), B, Tn, d.Hq, d.Hkv, d.D, d.rope_theta);
    zero(a.dln, N * C);
    cpu::linear_backward(a.dln.data(), p.grad(b.qkv_w), maybe_grad(p, b.qkv_b), a.dqkv.data(),
                         a.ln1[l].data(), p.value(b.qkv_w), N, C, W);
    norm_backward(d.llama, a.dres.data(), p.grad(b.norm1_w), maybe_grad(p, b.norm1_b), a.dln.data(),
                  a.residual[l].data(), p.value(b.norm1_w), a.mean1[l].data(), a.rstd1[l].data(), N, C);
    notify({b.norm1_w, b.norm1_b, b.qkv_w, b.qkv_b, b.proj_w, b.proj_b, b.norm2_w, b.norm2_b, b.fc_w, b.fc_b,
            b.mproj_w, b.mproj_b, b.gate_w, b.up_w, b.down_w});
  }

  if (a.positions >= 0) cpu::add_positions_backward(p.grad(a.positions), a.dres.data(), B, Tn, C);
  cpu::embedding_backward(p.grad(a.tokens), a.dres.data(), inputs, N, C);
  notify({a.tokens, a.positions});
}

template <typename T>
void Transformer<T>::notify(std::initializer_list<int> indices) {
  if (!grad_ready_) return;
  for (int i : indices)
    if (i >= 0) grad_ready_(i);
}

template <typename T>
double Transformer<T>::forward_backward(const int32_t* inputs, const int32_t* targets, int64_t B,
                                        int64_t Tn, T loss_scale) {
  forward(inputs, B, Tn);
  auto& a = *act_;
  const int64_t N = B * Tn;
  cpu::cross_entropy_forward_backward(a.losses.data(), a.logits.data(), a.logits.data(), targets, N,
                                      dims_.V, loss_scale);
  double sum = 0;
  for (int64_t i = 0; i < N; ++i) sum += a.losses[i];
  backward(inputs, B, Tn);
  return sum / static_cast<double>(N);
}

template <typename T>
double Transformer<T>::loss(const int32_t* inputs, const int32_t* targets, int64_t B, int64_t Tn) {
  forward(inputs, B, Tn);
  auto& a = *act_;
  const int64_t N = B * Tn;
  cpu::cross_entropy_forward(a.losses.data(), a.logits.data(), targets, N, dims_.V);
  double sum = 0;
  for (int64_t i = 0; i < N; ++i) sum += a.losses[i];
  return sum / static_cast<double>(N);
}

template <typename T>
void Transformer<T>::last_logits(const int32_t* inputs, int64_t B, int64_t Tn, T* out) {
  forward(inputs, B, Tn);
  const auto& a = *act_;
  for (int64_t b = 0; b < B; ++b) {
    const T* row = a.logits.data() + ((b * Tn) + Tn - 1) * dims_.V;
    std::copy(row, row + dims_.V, out + b * dims_.V);
  }
}

template class Transformer<float>;
template class Transformer<double>;

}  // namespace kumiko::model
