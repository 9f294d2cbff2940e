#include "kumiko/model/decoder.h"

#include <cmath>
#include <string>

#include "kumiko/ops/elementwise.h"
#include "kumiko/ops/gelu.h"
#include "kumiko/ops/layernorm.h"
#include "kumiko/ops/linear.h"
#include "kumiko/ops/rmsnorm.h"
#include "kumiko/ops/swiglu.h"

namespace kumiko::model {

KvDecoder::KvDecoder(const Transformer<float>& model, int64_t capacity)
    : p_(model.params()), d_(model.dims()), capacity_(capacity) {
  KUMIKO_CHECK(d_.llama || capacity <= d_.max_T, "decoder capacity ", capacity, " > max_seq_len ", d_.max_T);
  for (int64_t l = 0; l < d_.L; ++l) {
    k_.emplace_back(Shape{capacity, d_.Hkv * d_.D});
    v_.emplace_back(Shape{capacity, d_.Hkv * d_.D});
  }
  x_ = Tensor<float>({d_.C});
  h_ = Tensor<float>({d_.C});
  qkv_ = Tensor<float>({d_.qkv_width()});
  att_ = Tensor<float>({d_.Hq * d_.D});
  mid_ = Tensor<float>({d_.C});
  f1_ = Tensor<float>({d_.F});
  f2_ = Tensor<float>({d_.F});
  fa_ = Tensor<float>({d_.F});
  stats_ = Tensor<float>({1});
  stats2_ = Tensor<float>({1});
}

void KvDecoder::step(int32_t token, float* logits) {
  KUMIKO_CHECK(pos_ < capacity_, "KV cache full (", capacity_, " positions)");
  KUMIKO_CHECK(token >= 0 && token < d_.V, "token ", token, " outside the vocabulary");
  const int64_t C = d_.C, D = d_.D, F = d_.F;
  auto w = [&](const std::string& name) { return p_.value(p_.index(name)); };
  auto b = [&](const std::string& name) { return p_.contains(name) ? p_.value(p_.index(name)) : nullptr; };
  auto norm = [&](float* out, const float* in, const std::string& prefix) {
    if (d_.llama)
      cpu::rmsnorm_forward(out, stats_.data(), in, w(prefix + ".weight"), 1, C, static_cast<float>(d_.eps));
    else
      cpu::layernorm_forward(out, stats_.data(), stats2_.data(), in, w(prefix + ".weight"), b(prefix + ".bias"),
                             1, C, static_cast<float>(d_.eps));
  };

  float* x = x_.data();
  const float* emb = w("embed.tokens.weight") + static_cast<int64_t>(token) * C;
  std::copy(emb, emb + C, x);
  if (!d_.llama) cpu::add_inplace(x, w("embed.positions.weight") + pos_ * C, C);

  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  const int64_t group = d_.Hq / d_.Hkv;
  std::vector<double> scores(pos_ + 1);
  for (int64_t l = 0; l < d_.L; ++l) {
    const std::string p = "blocks." + std::to_string(l);
    norm(h_.data(), x, p + ".norm1");
    cpu::linear_forward(qkv_.data(), h_.data(), w(p + ".attn.qkv.weight"), b(p + ".attn.qkv.bias"), 1, C,
                        d_.qkv_width());
    float* q = qkv_.data();
    float* k = q + d_.Hq * D;
    float* v = k + d_.Hkv * D;
    if (d_.llama) {  // RoPE at this position, HF rotate_half convention
      for (int64_t h = 0; h < d_.Hq + d_.Hkv; ++h) {
        float* head = q + h * D;
        for (int64_t i = 0; i < D / 2; ++i) {
          const double angle = static_cast<double>(pos_) * std::pow(d_.rope_theta, -2.0 * i / D);
          const double c = std::cos(angle), s = std::sin(angle);
          const double a = head[i], bb = head[i + D / 2];
          head[i] = static_cast<float>(a * c - bb * s);
          head[i + D / 2] = static_cast<float>(bb * c + a * s);
        }
      }
    }
    std::copy(k, k + d_.Hkv * D, k_[l].data() + pos_ * d_.Hkv * D);
    std::copy(v, v + d_.Hkv * D, v_[l].data() + pos_ * d_.Hkv * D);
    for (int64_t h = 0; h < d_.Hq; ++h) {
      const int64_t kv = h / group;
      const float* qh = q + h * D;
      double mx = -INFINITY;
      for (int64_t t = 0; t <= pos_; ++t) {
        const float* kt = k_[l].data() + (t * d_.Hkv + kv) * D;
        double dot = 0;
        for (int64_t i = 0; i < D; ++i) dot += static_cast<double>(qh[i]) * kt[i];
        scores[t] = dot * scale;
        mx = std::max(mx, scores[t]);
      }
      double sum = 0;
      for (int64_t t = 0; t <= pos_; ++t) sum += scores[t] = std::exp(scores[t] - mx);
      float* out = att_.data() + h * D;
      for (int64_t i = 0; i < D; ++i) {
        double acc = 0;
        for (int64_t t = 0; t <= pos_; ++t) acc += scores[t] * v_[l].data()[(t * d_.Hkv + kv) * D + i];
        out[i] = static_cast<float>(acc / sum);
      }
    }
    cpu::linear_forward(mid_.data(), att_.data(), w(p + ".attn.proj.weight"), b(p + ".attn.proj.bias"), 1,
                        d_.Hq * D, C);
    cpu::add_inplace(x, mid_.data(), C);
    norm(h_.data(), x, p + ".norm2");
    if (d_.llama) {
      cpu::linear_forward(f1_.data(), h_.data(), w(p + ".mlp.gate.weight"), (const float*)nullptr, 1, C, F);
      cpu::linear_forward(f2_.data(), h_.data(), w(p + ".mlp.up.weight"), (const float*)nullptr, 1, C, F);
      cpu::swiglu_forward(fa_.data(), f1_.data(), f2_.data(), F);
      cpu::linear_forward(mid_.data(), fa_.data(), w(p + ".mlp.down.weight"), (const float*)nullptr, 1, F, C);
    } else {
      cpu::linear_forward(f1_.data(), h_.data(), w(p + ".mlp.fc.weight"), b(p + ".mlp.fc.bias"), 1, C, F);
      cpu::gelu_forward(fa_.data(), f1_.data(), F);
      cpu::linear_forward(mid_.data(), fa_.data(), w(p + ".mlp.proj.weight"), b(p + ".mlp.proj.bias"), 1, F, C);
    }
    cpu::add_inplace(x, mid_.data(), C);
  }
  norm(h_.data(), x, "final_norm");
  const float* head = d_.tied ? w("embed.tokens.weight") : w("head.weight");
  cpu::linear_forward(logits, h_.data(), head, (const float*)nullptr, 1, C, d_.V);
  ++pos_;
}

}  // namespace kumiko::model
