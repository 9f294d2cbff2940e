// Checks after parsing: ranges, allowed values and the relations between keys.
// Every message is one line: "[<file>: ]section.key: expected ..., got ...", naming the
// INI file when the value at fault came from it.
#include <algorithm>
#include <charconv>
#include <cstdio>
#include <sstream>

#include "config/fields.h"

#include "kumiko/config/config.h"
#include "kumiko/core/error.h"

namespace kumiko::config {
namespace {

std::string num(double v) {
  char buffer[64];
  auto [end, ec] = std::to_chars(buffer, buffer + sizeof(buffer), v);
  return ec == std::errc() ? std::string(buffer, end) : std::to_string(v);
}
std::string num(int64_t v) { return std::to_string(v); }
std::string num(int v) { return std::to_string(v); }

class Checker {
 public:
  explicit Checker(const Config& config) : config_(config) {}

  // Throws "[<file>: ]<key>: expected <expected>, got <got>" unless ok; the file is named
  // when the value of `key` came from it (not from the command line or the defaults).
  void require(bool ok, const char* key, const std::string& expected,
               const std::string& got) const {
    if (ok) return;
    std::string where;
    if (in_file(key) && !config_.source_file.empty()) where = config_.source_file + ": ";
    throw UserError(where + key + ": expected " + expected + ", got " + got);
  }

  template <typename T>
  void positive(const char* key, T v) const {
    require(v > 0, key, std::is_integral_v<T> ? "a positive integer" : "a positive number", num(v));
  }
  template <typename T>
  void non_negative(const char* key, T v) const {
    require(v >= 0, key, "a value >= 0", num(v));
  }

 private:
  bool in_file(const char* key) const {
    const auto& keys = config_.file_keys;
    return std::find(keys.begin(), keys.end(), key) != keys.end();
  }
  const Config& config_;
};

bool is_choice(const std::string& value, const std::string& choices) {
  size_t start = 0;
  while (start <= choices.size()) {
    size_t bar = choices.find('|', start);
    if (bar == std::string::npos) bar = choices.size();
    if (choices.compare(start, bar - start, value) == 0 && bar - start == value.size()) return true;
    start = bar + 1;
  }
  return false;
}

void check_choices(const Config& config, const Checker& check) {
  detail::for_each_field(config,
                         [&](const char* key, const auto& field, const char*, const char* choices) {
                           using T = std::decay_t<decltype(field)>;
                           if (choices == nullptr) return;
                           if constexpr (std::is_same_v<T, std::string>) {
                             check.require(is_choice(field, choices), key,
                                           std::string("one of ") + choices, "'" + field + "'");
                           } else if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) {
                             check.require(is_choice(std::to_string(field), choices), key,
                                           std::string("one of ") + choices, std::to_string(field));
                           }
                         });
}

void check_model(const Config& c, const Checker& check) {
  const ModelConfig& m = c.model;
  check.positive("model.n_layers", m.n_layers);
  check.positive("model.n_heads", m.n_heads);
  check.non_negative("model.n_kv_heads", m.n_kv_heads);
  check.positive("model.d_model", m.d_model);
  check.non_negative("model.d_ff", m.d_ff);
  check.positive("model.vocab_size", m.vocab_size);
  check.positive("model.max_seq_len", m.max_seq_len);
  check.positive("model.norm_eps", m.norm_eps);
  check.positive("model.rope_theta", m.rope_theta);
  check.positive("model.init_std", m.init_std);
  check.require(m.d_model % m.n_heads == 0, "model.d_model",
                "a multiple of model.n_heads (" + num(m.n_heads) + ")", num(m.d_model));
  check.require(m.n_kv_heads <= m.n_heads && m.n_heads % m.kv_heads() == 0, "model.n_kv_heads",
                "0 or a divisor of model.n_heads (" + num(m.n_heads) + ")", num(m.n_kv_heads));
  if (m.arch == "gpt2") {
    check.require(
        m.kv_heads() == m.n_heads, "model.n_kv_heads",
        "0 or model.n_heads (" + num(m.n_heads) + ") for arch gpt2 (no grouped-query attention)",
        num(m.n_kv_heads));
  } else if (m.arch == "llama") {
    check.require(m.head_dim() % 2 == 0, "model.d_model",
                  "an even head dim d_model / n_heads for llama's RoPE",
                  num(m.d_model) + " / " + num(m.n_heads) + " = " + num(m.head_dim()));
  }
}

void check_train(const Config& c, const Checker& check) {
  const TrainConfig& t = c.train;
  check.positive("data.seq_len", c.data.seq_len);
  check.require(c.data.seq_len <= c.model.max_seq_len, "data.seq_len",
                "at most model.max_seq_len (" + num(c.model.max_seq_len) + ")",
                num(c.data.seq_len));
  check.require(c.data.synthetic || !c.data.dir.empty(), "data.dir",
                "a token-shard folder (or data.synthetic = true)", "''");
  check.positive("train.steps", t.steps);
  check.positive("train.global_batch", t.global_batch);
  check.positive("train.micro_batch", t.micro_batch);
  check.positive("train.lr", t.lr);
  check.non_negative("train.min_lr", t.min_lr);
  check.require(t.min_lr <= t.lr, "train.min_lr", "at most train.lr (" + num(t.lr) + ")",
                num(t.min_lr));
  check.non_negative("train.warmup_steps", t.warmup_steps);
  check.require(t.warmup_steps <= t.steps, "train.warmup_steps",
                "at most train.steps (" + num(t.steps) + ")", num(t.warmup_steps));
  check.non_negative("train.weight_decay", t.weight_decay);
  check.non_negative("train.grad_clip", t.grad_clip);
  check.require(t.beta1 >= 0 && t.beta1 < 1, "train.beta1", "a value in [0, 1)", num(t.beta1));
  check.require(t.beta2 >= 0 && t.beta2 < 1, "train.beta2", "a value in [0, 1)", num(t.beta2));
  check.positive("train.eps", t.eps);
  check.non_negative("train.eval_every", t.eval_every);
  check.positive("train.eval_batches", t.eval_batches);
  check.require(t.max_skipped_steps >= 1, "train.max_skipped_steps", "an integer >= 1", num(t.max_skipped_steps));
  check.require(t.inject_nan_step >= 0, "train.inject_nan_step", "a step >= 0", num(t.inject_nan_step));
  check.require(t.inject_nan_count >= 1, "train.inject_nan_count", "an integer >= 1", num(t.inject_nan_count));
  check.require(t.inject_nan_rank >= 0, "train.inject_nan_rank", "a rank >= 0", num(t.inject_nan_rank));
  check.non_negative("train.spike_factor", t.spike_factor);
  check.positive("train.spike_window", t.spike_window);
  check.non_negative("train.spike_grad_norm", t.spike_grad_norm);
  check.non_negative("train.spike_max_rollbacks", t.spike_max_rollbacks);
  check.non_negative("train.inject_spike_step", t.inject_spike_step);
  check.positive("train.inject_spike_scale", t.inject_spike_scale);
  check.non_negative("log.straggler_every", c.log.straggler_every);
  check.positive("log.straggler_threshold", c.log.straggler_threshold);
  check.require(t.stop_at >= 0 && t.stop_at <= t.steps, "train.stop_at",
                "0 (run to train.steps) or a step in [1, " + num(t.steps) + "]", num(t.stop_at));
}

void check_layout(const Config& c, const Checker& check) {
  const ParallelConfig& p = c.parallel;
  const ModelConfig& m = c.model;
  check.positive("parallel.dp", p.dp);
  check.positive("parallel.tp", p.tp);
  check.positive("parallel.pp", p.pp);
  const int64_t per_step = int64_t{c.train.micro_batch} * p.dp;
  check.require(c.train.global_batch % per_step == 0, "train.global_batch",
                "a multiple of train.micro_batch x parallel.dp (" + num(c.train.micro_batch) +
                    " x " + num(p.dp) + " = " + num(per_step) + ")",
                num(c.train.global_batch));
  check.require(m.n_heads % p.tp == 0, "parallel.tp",
                "a divisor of model.n_heads (" + num(m.n_heads) + ")", num(p.tp));
  check.require(m.kv_heads() % p.tp == 0, "parallel.tp",
                "a divisor of the kv heads (" + num(m.kv_heads()) + ")", num(p.tp));
  check.require(m.ff_dim() % p.tp == 0, "parallel.tp",
                "a divisor of the MLP width (" + num(m.ff_dim()) + ")", num(p.tp));
  check.require(m.vocab_size % p.tp == 0, "parallel.tp",
                "a divisor of model.vocab_size (" + num(m.vocab_size) + ", split over the tp ranks)", num(p.tp));
  check.require(!p.sequence_parallel || (int64_t{c.train.micro_batch} * c.data.seq_len) % p.tp == 0,
                "parallel.sequence_parallel",
                "train.micro_batch x data.seq_len divisible by parallel.tp (" + num(p.tp) + ")",
                num(int64_t{c.train.micro_batch} * c.data.seq_len) + " tokens");
  check.require(p.pp <= m.n_layers, "parallel.pp",
                "at most model.n_layers (" + num(m.n_layers) + ")", num(p.pp));
}

void check_services(const Config& c, const Checker& check) {
  const BackendConfig& b = c.backend;
  check.non_negative("backend.threads", b.threads);
  check.non_negative("backend.peak_gflops", b.peak_gflops);
  check.require(b.matmul == "kumiko" || b.device == "cuda", "backend.matmul",
                "kumiko when backend.device is " + b.device, "'" + b.matmul + "'");
  check.require(b.attention == "kumiko" || b.device == "cuda", "backend.attention",
                "kumiko when backend.device is " + b.device, "'" + b.attention + "'");
  check.require(b.bf16_gemm == "auto" || (b.device == "cpu" && b.dtype == "bf16"), "backend.bf16_gemm",
                "auto unless backend.device = cpu and backend.dtype = bf16 (it picks the CPU's bf16 GEMM)",
                "'" + b.bf16_gemm + "' with " + b.device + " " + b.dtype);
  check.require(b.attention != "cudnn" || b.dtype == "bf16", "backend.attention",
                "kumiko when backend.dtype is fp32 (cuDNN's fused attention is bf16 only)", "'cudnn'");
  if (b.device == "cuda") {
    const ModelConfig& m = c.model;
    const int head_dim = m.head_dim();
    check.require(head_dim % 8 == 0 && head_dim <= 128, "model.d_model",
                  "d_model / n_heads a multiple of 8 and at most 128 on backend.device = cuda (head dim)",
                  num(m.d_model) + " / " + num(m.n_heads));
  }
  check.non_negative("checkpoint.every_steps", c.checkpoint.every_steps);
  check.non_negative("checkpoint.keep_last", c.checkpoint.keep_last);
  check.require(c.parallel.bucket_mb > 0, "parallel.bucket_mb", "a size in MB > 0", num(c.parallel.bucket_mb));
  {
    // Pipeline stages: pp x pp_chunks virtual stages, each a contiguous layer range.
    const ParallelConfig& p = c.parallel;
    const ModelConfig& m = c.model;
    const int stages = p.pp * std::max(p.pp_chunks, 1);
    check.require(p.pp_chunks >= 1, "parallel.pp_chunks", "an integer >= 1", num(p.pp_chunks));
    check.require(p.pp_schedule != "interleaved" || p.pp == 1 || p.pp_chunks >= 2, "parallel.pp_chunks",
                  ">= 2 with parallel.pp_schedule = interleaved", num(p.pp_chunks));
    check.require(p.pp_schedule == "interleaved" || p.pp_chunks == 1, "parallel.pp_chunks",
                  "1 unless parallel.pp_schedule = interleaved", num(p.pp_chunks));
    if (p.pp_layers.empty()) {
      check.require(m.n_layers % stages == 0, "model.n_layers",
                    "a multiple of parallel.pp x parallel.pp_chunks = " + num(stages) +
                        " (or set parallel.pp_layers)",
                    num(m.n_layers));
    } else {
      int64_t sum = 0, count = 0;
      bool ok = true;
      std::stringstream in(p.pp_layers);
      for (std::string item; std::getline(in, item, ',');) {
        try {
          size_t used = 0;
          const int64_t v = std::stoll(item, &used);
          ok = ok && used == item.size() && v >= 1;
          sum += v;
        } catch (const std::exception&) {
          ok = false;
        }
        ++count;
      }
      check.require(ok && count == stages && sum == m.n_layers, "parallel.pp_layers",
                    num(int64_t{stages}) + " positive layer counts (parallel.pp x parallel.pp_chunks) summing to "
                        "model.n_layers = " + num(m.n_layers),
                    "'" + p.pp_layers + "'");
    }
    if (p.pp > 1) {
      const int64_t micro = c.train.global_batch / std::max<int64_t>(int64_t{c.train.micro_batch} * p.dp, 1);
      check.require(p.pp_schedule != "interleaved" || micro % p.pp == 0, "parallel.pp_schedule",
                    "interleaved needs the micro-batches per step (train.global_batch / (train.micro_batch x "
                    "parallel.dp) = " + num(micro) + ") to be a multiple of parallel.pp",
                    num(p.pp));
    }
  }
  check.require(c.parallel.comm_timeout_s >= 0, "parallel.comm_timeout_s", "seconds >= 0 (0 = no watchdog)",
                num(c.parallel.comm_timeout_s));
  check.non_negative("checkpoint.write_delay_ms", c.checkpoint.write_delay_ms);
  check.require(!c.log.run_dir.empty(), "log.run_dir", "a folder", "''");
  check.positive("log.every_steps", c.log.every_steps);
  check.non_negative("log.sample_every", c.log.sample_every);
}

}  // namespace

void validate(const Config& config) {
  Checker check(config);
  check_choices(config, check);  // first: later checks read arch
  check_model(config, check);
  check_train(config, check);
  check_layout(config, check);
  check_services(config, check);
}

int64_t estimate_params(const ModelConfig& m) {
  const int64_t C = m.d_model, V = m.vocab_size, F = m.ff_dim(), L = m.n_layers;
  const int64_t head = m.tie_embeddings ? 0 : V * C;
  if (m.arch == "llama") {  // RMSNorm (weight only), no biases, SwiGLU MLP, RoPE
    const int64_t kv = int64_t{m.kv_heads()} * m.head_dim();
    const int64_t block = 2 * C + 2 * C * C + 2 * C * kv + 3 * C * F;
    return V * C + L * block + C + head;
  }
  // gpt2: learned positions, LayerNorm (weight + bias), biases on every linear, GELU MLP
  const int64_t block = 4 * C + (3 * C * C + 3 * C) + (C * C + C) + (C * F + F) + (F * C + C);
  return V * C + int64_t{m.max_seq_len} * C + L * block + 2 * C + head;
}

std::string summary(const Config& c) {
  const double params = static_cast<double>(estimate_params(c.model));
  char size[32];
  if (params >= 1e9)
    std::snprintf(size, sizeof(size), "%.2fB", params / 1e9);
  else if (params >= 1e6)
    std::snprintf(size, sizeof(size), "%.1fM", params / 1e6);
  else
    std::snprintf(size, sizeof(size), "%.1fK", params / 1e3);
  const int64_t tokens = int64_t{c.train.global_batch} * c.data.seq_len;
  return c.model.arch + ", " + num(c.model.n_layers) + " layers x d_model " + num(c.model.d_model) +
         ", " + size + " params, " + num(tokens) + " tokens/step (global_batch " +
         num(c.train.global_batch) + " x seq_len " + num(c.data.seq_len) + "), dp " +
         num(c.parallel.dp) + " tp " + num(c.parallel.tp) + " pp " + num(c.parallel.pp) + ", " +
         c.backend.device + " " + c.backend.dtype;
}

}  // namespace kumiko::config
