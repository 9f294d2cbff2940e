#include "kumiko/model/transformer.h"

#include <algorithm>
#include <cmath>

#include "model/transformer_impl.h"

namespace kumiko::model {

Recompute parse_recompute(const std::string& name) {
  if (name == "none") return Recompute::none;
  if (name == "selective") return Recompute::selective;
  if (name == "full") return Recompute::full;
  throw UserError("train.recompute = '" + name + "': expected none, selective or full");
}

const char* recompute_name(Recompute r) {
  switch (r) {
    case Recompute::selective: return "selective";
    case Recompute::full: return "full";
    default: return "none";
  }
}

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

template class BasicTransformer<backend::Cpu<float>>;
template class BasicTransformer<backend::Cpu<double>>;

}  // namespace kumiko::model
