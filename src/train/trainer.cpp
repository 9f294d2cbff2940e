#include "kumiko/train/trainer.h"

#include <omp.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "kumiko/core/error.h"
#include "kumiko/core/log.h"
#include "kumiko/core/rng.h"
#include "kumiko/data/loader.h"
#include "kumiko/model/transformer.h"
#include "kumiko/train/optimizer.h"
#include "kumiko/train/schedule.h"
#include "kumiko/train/weights.h"

namespace kumiko::train {

void set_threads(int threads) {
  const int n = threads > 0 ? threads : omp_get_num_procs();
  omp_set_num_threads(n);
}

namespace {

std::string format_duration(double seconds) {
  const int64_t s = static_cast<int64_t>(seconds + 0.5);
  char buf[32];
  if (s >= 3600)
    std::snprintf(buf, sizeof buf, "%ldh%02ldm", static_cast<long>(s / 3600), static_cast<long>(s / 60 % 60));
  else if (s >= 60)
    std::snprintf(buf, sizeof buf, "%ldm%02lds", static_cast<long>(s / 60), static_cast<long>(s % 60));
  else
    std::snprintf(buf, sizeof buf, "%lds", static_cast<long>(s));
  return buf;
}

// Random tokens for benchmarks ([data] synthetic): a pure function of (seed, step, index).
void synthetic_batch(uint64_t seed, int64_t step, int64_t first, int64_t count, int64_t T, int64_t V,
                     int32_t* inputs, int32_t* targets) {
  const uint64_t key = rng::stream_key(seed, "data.synthetic");
  for (int64_t s = 0; s < count; ++s)
    for (int64_t t = 0; t <= T; ++t) {
      const uint64_t counter = (static_cast<uint64_t>(first + s) * (T + 1) + t);
      const auto block = rng::philox(key, static_cast<uint64_t>(step), counter);
      const int32_t tok = static_cast<int32_t>(block[0] % static_cast<uint32_t>(V));
      if (t < T) inputs[s * T + t] = tok;
      if (t > 0) targets[s * T + t - 1] = tok;
    }
}

}  // namespace

struct Trainer::State {
  std::unique_ptr<data::Loader> loader;
  std::unique_ptr<model::Transformer<float>> model;
  std::unique_ptr<AdamW<float>> optimizer;
  std::ofstream metrics;
  std::vector<int32_t> inputs, targets;  // [micro_batch, T]
};

Trainer::Trainer(config::Config config) : config_(std::move(config)), state_(std::make_unique<State>()) {}
Trainer::~Trainer() = default;

RunSummary Trainer::run() {
  const auto& cfg = config_;
  auto log = log::get("train");
  set_threads(cfg.backend.threads);
  KUMIKO_USER_CHECK(cfg.backend.device == "cpu", "backend.device: '", cfg.backend.device,
                    "' is not available in this build yet (expected cpu)");
  KUMIKO_USER_CHECK(cfg.parallel.dp * cfg.parallel.tp * cfg.parallel.pp == 1,
                    "parallel.dp/tp/pp: multi-process layouts are not available yet (expected 1)");

  auto& s = *state_;
  const int64_t T = cfg.data.seq_len, MB = cfg.train.micro_batch, GB = cfg.train.global_batch;
  std::string tokenizer_sha, tokenizer_path;
  if (!cfg.data.synthetic) {
    s.loader = std::make_unique<data::Loader>(cfg.data.dir, T, cfg.train.seed);
    KUMIKO_USER_CHECK(s.loader->vocab_size() <= cfg.model.vocab_size, "model.vocab_size = ",
                      cfg.model.vocab_size, " is smaller than the vocabulary of ",
                      s.loader->tokenizer_path(), " (", s.loader->vocab_size(), ")");
    tokenizer_sha = s.loader->tokenizer_sha256();
    tokenizer_path = s.loader->tokenizer_path();
  }

  const model::Dims dims = model::Dims::from(cfg.model);
  s.model = std::make_unique<model::Transformer<float>>(dims, MB, T);
  auto& params = s.model->params();
  params.initialize(cfg.train.seed);
  s.optimizer = std::make_unique<AdamW<float>>(
      params, AdamWSettings{cfg.train.beta1, cfg.train.beta2, cfg.train.eps, cfg.train.weight_decay});

  const std::filesystem::path run_dir(cfg.log.run_dir);
  std::filesystem::create_directories(run_dir);
  {
    std::ofstream(run_dir / "config.ini") << config::to_ini(cfg);
  }
  WeightsInfo info{config::to_ini(cfg), tokenizer_sha, tokenizer_path, 0};
  write_weights((run_dir / "weights_init.h5").string(), params, info);
  s.metrics.open(run_dir / "metrics.jsonl", std::ios::app);
  KUMIKO_USER_CHECK(s.metrics.good(), (run_dir / "metrics.jsonl").string(), ": cannot open for writing");

  const double flops_per_token = model::train_flops_per_token(dims, T);
  int64_t n_params = 0;
  for (size_t i = 0; i < params.size(); ++i) n_params += params.numel(static_cast<int>(i));
  log->info("model {}: {} layers, d_model {}, {} heads ({} kv), vocab {}, {:.2f}M parameters; "
            "{} threads; {:.1f} MFLOP per token",
            cfg.model.arch, dims.L, dims.C, dims.Hq, dims.Hkv, dims.V, n_params / 1e6,
            omp_get_max_threads(), flops_per_token / 1e6);

  s.inputs.resize(MB * T);
  s.targets.resize(MB * T);
  const int64_t end = cfg.train.stop_at > 0 ? std::min(cfg.train.stop_at, cfg.train.steps) : cfg.train.steps;
  const int64_t micro_steps = GB / MB;
  const float loss_scale = 1.0f / static_cast<float>(micro_steps);
  RunSummary summary;
  using clock = std::chrono::steady_clock;
  const auto start_time = clock::now();
  double train_seconds = 0;

  auto evaluate = [&](int64_t step) {
    if (!s.loader || cfg.train.eval_batches <= 0) return;
    double total = 0;
    for (int64_t k = 0; k < cfg.train.eval_batches; ++k) {
      s.loader->fill(data::Split::val, k, MB, 0, MB, s.inputs.data(), s.targets.data());
      total += s.model->loss(s.inputs.data(), s.targets.data(), MB, T);
    }
    const double val = total / cfg.train.eval_batches;
    summary.last_val_loss = val;
    log->info("eval step {} | val_loss {:.4f} | val_ppl {:.2f}", step, val, std::exp(val));
    s.metrics << "{\"step\":" << step << ",\"val_loss\":" << val << ",\"val_ppl\":" << std::exp(val)
              << "}\n";
    s.metrics.flush();
  };

  for (int64_t step = 0; step < end; ++step) {
    const auto t0 = clock::now();
    params.zero_grads();
    double loss = 0;
    for (int64_t micro = 0; micro < micro_steps; ++micro) {
      if (s.loader)
        s.loader->fill(data::Split::train, step, GB, micro * MB, MB, s.inputs.data(), s.targets.data());
      else
        synthetic_batch(cfg.train.seed, step, micro * MB, MB, T, dims.V, s.inputs.data(), s.targets.data());
      loss += s.model->forward_backward(s.inputs.data(), s.targets.data(), MB, T, loss_scale / (MB * T)) /
              micro_steps;
    }
    const double norm = grad_norm(params);
    const double clip = cfg.train.grad_clip > 0 && norm > cfg.train.grad_clip
                            ? cfg.train.grad_clip / (norm + 1e-6)
                            : 1.0;
    const double lr = learning_rate(cfg.train, step);
    s.optimizer->step(params, lr, clip);
    const double dt = std::chrono::duration<double>(clock::now() - t0).count();
    train_seconds += dt;
    summary.losses.push_back(loss);
    summary.steps_taken = step + 1;

    const double tokens_per_s = static_cast<double>(GB * T) / dt;
    const double mfu = cfg.backend.peak_gflops > 0
                           ? tokens_per_s * flops_per_token / (cfg.backend.peak_gflops * 1e9)
                           : 0.0;
    s.metrics << "{\"step\":" << step + 1 << ",\"loss\":" << loss << ",\"lr\":" << lr
              << ",\"grad_norm\":" << norm << ",\"tokens_per_s\":" << tokens_per_s
              << ",\"mfu\":" << mfu << ",\"step_s\":" << dt << "}\n";
    const bool last = step + 1 == end;
    if (cfg.log.every_steps > 0 && ((step + 1) % cfg.log.every_steps == 0 || last)) {
      const double eta = train_seconds / (step + 1) * static_cast<double>(end - step - 1);
      log->info("step {:>5}/{} | loss {:.4f} | lr {:.2e} | gnorm {:.3f} | {:.0f} tok/s | mfu {} | eta {}",
                step + 1, end, loss, lr, norm, tokens_per_s,
                cfg.backend.peak_gflops > 0 ? fmt::format("{:.1f}%", 100 * mfu) : std::string("n/a"),
                format_duration(eta));
    }
    if (!std::isfinite(loss)) throw Error(fmt::format("loss is not finite at step {}", step + 1));
    if ((cfg.train.eval_every > 0 && (step + 1) % cfg.train.eval_every == 0) || last) evaluate(step + 1);
  }
  s.metrics.flush();

  info.step = summary.steps_taken;
  write_weights((run_dir / "weights_final.h5").string(), params, info);
  log->info("done: {} steps in {}, weights in {}", summary.steps_taken,
            format_duration(std::chrono::duration<double>(clock::now() - start_time).count()),
            (run_dir / "weights_final.h5").string());
  return summary;
}

}  // namespace kumiko::train
