#pragma once
// The one engine template (parallel/engine.h) over a backend, included where it is
// instantiated: src/parallel/engine.cpp (CPU), src/gpu/engine_cuda.cpp (CUDA).
#include <cmath>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "kumiko/core/error.h"
#include "kumiko/parallel/data_parallel.h"
#include "kumiko/parallel/engine.h"
#include "kumiko/parallel/pipeline.h"
#include "kumiko/parallel/schedule.h"

namespace kumiko::parallel {

// The communicators the backend's collectives use: the grid's host groups, or device
// communicators (NCCL) over the same ranks. nullptr = the grid's group.
struct EngineComms {
  comm::Communicator *tp = nullptr, *dp = nullptr, *pp = nullptr, *embed = nullptr;
  std::vector<std::unique_ptr<comm::Communicator>> owned;
};

template <typename B>
class EngineImpl final : public Engine {
 public:
  using Model = model::BasicTransformer<B>;

  EngineImpl(const EngineSetup& s, std::unique_ptr<B> backend, EngineComms comms)
      : s_(s), backend_(std::move(backend)), comms_(std::move(comms)) {
    const auto& cfg = *s.config;
    auto& grid = *s.grid;
    if (!comms_.tp) comms_.tp = &grid.tp_group();
    if (!comms_.dp) comms_.dp = &grid.dp_group();
    if (!comms_.pp) comms_.pp = &grid.pp_group();
    if (!comms_.embed) comms_.embed = s.embed_group;
    model::TensorParallel tp;
    if (grid.tp() > 1) tp = {comms_.tp, cfg.parallel.sequence_parallel};
    model_ = std::make_unique<Model>(s.dims, s.micro_batch, s.seq_len, tp, s.stage, backend_.get(),
                                     model::parse_recompute(cfg.train.recompute));
    dp_ = std::make_unique<BasicDataParallel<B>>(
        *comms_.dp, *model_, cfg.parallel.zero, static_cast<int64_t>(cfg.parallel.bucket_mb * 1e6),
        train::AdamWSettings{cfg.train.beta1, cfg.train.beta2, cfg.train.eps, cfg.train.weight_decay});
    dp_->set_host_group(&grid.dp_group());
    model_->set_grad_ready_hook([this](int i) { dp_->on_grad_ready(i); });
    const int pp = grid.pp();
    const auto& stage = model_->pipeline_stage();
    const bool tied_across_stages = pp > 1 && s.dims.tied;
    if (grid.tp() > 1 || pp > 1) {
      // Gradient norm over the whole model: replicated tensors count once over tp,
      // the last stage's copy of a tied embedding not at all.
      std::vector<double> weights;
      const auto& params = model_->params();
      for (size_t i = 0; i < params.size(); ++i) {
        const auto& spec = params.spec(static_cast<int>(i));
        double w = 1.0;
        if (grid.tp() > 1 && spec.split == model::Split::none) w = 1.0 / grid.tp();
        if (tied_across_stages && spec.name == "embed.tokens.weight" && !stage.has_embedding) w = 0.0;
        weights.push_back(w);
      }
      std::vector<comm::Communicator*> groups;
      if (grid.tp() > 1) groups.push_back(&grid.tp_group());
      if (pp > 1) groups.push_back(&grid.pp_group());
      dp_->set_norm_weights(weights, groups);
    }
    if (pp > 1)
      runner_ = std::make_unique<BasicPipelineRunner<B>>(*model_, *comms_.pp, parse_schedule(cfg.parallel.pp_schedule),
                                                         static_cast<int>(s.micro_steps), s.micro_batch, s.seq_len);
    inputs_.resize(static_cast<size_t>(s.micro_batch * s.seq_len));
    targets_.resize(inputs_.size());
  }

  model::ParameterStore<float>& params() override { return model_->params(); }
  const model::PipelineStage& stage() const override { return model_->pipeline_stage(); }
  void download_parameters() override { model_->download_parameters(); }
  void upload_parameters() override { model_->upload_parameters(); }
  model::Transformer<float>* cpu_model() override {
    if constexpr (std::is_same_v<B, backend::Cpu<float>>)
      return model_.get();
    else
      return nullptr;
  }

  void zero_grads() override { model_->zero_grads(); }
  void poison_gradient() override {
    model_->settle_grads();  // the backward must accumulate onto the NaN, not overwrite it
    const float nan = std::numeric_limits<float>::quiet_NaN();
    backend_->from_host(model_->flat_grads(), &nan, 1);
  }

  double forward_backward(const BatchFn& fill, double loss_scale) override {
    const int64_t MB = s_.micro_batch, T = s_.seq_len, micro_steps = s_.micro_steps;
    double loss = 0;
    if (runner_) {
      loss = runner_->run_step([&](int mb, int32_t* in, int32_t* tg) { fill(mb, in, tg); }, loss_scale) /
             static_cast<double>(micro_steps * MB * T);
      model_->settle_grads();  // gradients this stage's backwards did not write are zero
      s_.grid->pp_group().all_reduce(&loss, 1, comm::ReduceOp::sum);  // the loss lives on the last stage
      if (comms_.embed && (s_.grid->pp_rank() == 0 || s_.grid->pp_rank() == s_.grid->pp() - 1)) {
        // The first and last stages both hold the tied embedding: its gradient is summed between them.
        const int e = model_->params().index("embed.tokens.weight");
        backend_->all_reduce(*comms_.embed, model_->flat_grads() + model_->offset(e), model_->params().numel(e),
                             comm::ReduceOp::sum);
      }
      return loss;
    }
    for (int64_t micro = 0; micro < micro_steps; ++micro) {
      fill(micro, inputs_.data(), targets_.data());
      if (micro == micro_steps - 1) dp_->arm();  // reduce buckets during the last backward
      loss += model_->forward_backward(inputs_.data(), targets_.data(), MB, T, loss_scale) /
              static_cast<double>(micro_steps);
    }
    return loss;
  }
  double finish_reduction() override { return dp_->finish_reduction(); }
  double grad_norm() override { return dp_->grad_norm(); }
  double step(double lr, double grad_scale) override { return dp_->step(lr, grad_scale); }
  int64_t optimizer_steps() const override { return dp_->optimizer_steps(); }
  void set_optimizer_steps(int64_t steps) override { dp_->set_optimizer_steps(steps); }
  void gather_moments(std::vector<float>& m, std::vector<float>& v) override { dp_->gather_moments(m, v); }
  void scatter_moments(const float* m, const float* v) override { dp_->scatter_moments(m, v); }
  bool host_moments(float** m, float** v) override {
    if constexpr (!B::kHost) {
      return false;
    } else {
      if (dp_->zero() != 0) return false;  // ZeRO-1: this rank's slices, in bucket order
      *m = dp_->moments_m();
      *v = dp_->moments_v();
      return true;
    }
  }
  double eval_loss_sum(const int32_t* inputs, const int32_t* targets) override {
    if (runner_) return runner_->run_forward(inputs, targets);
    const int64_t MB = s_.micro_batch, T = s_.seq_len;
    return model_->loss(inputs, targets, MB, T) * static_cast<double>(MB * T);
  }
  double bubble_fraction() const override { return runner_ ? runner_->bubble_fraction() : 0.0; }
  size_t arena_bytes() const override { return model_->arena_bytes(); }
  std::string describe() const override { return backend_->describe(); }

 private:
  EngineSetup s_;
  std::unique_ptr<B> backend_;
  EngineComms comms_;
  std::unique_ptr<Model> model_;
  std::unique_ptr<BasicDataParallel<B>> dp_;
  std::unique_ptr<BasicPipelineRunner<B>> runner_;
  std::vector<int32_t> inputs_, targets_;
};

}  // namespace kumiko::parallel
