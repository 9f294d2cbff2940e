#pragma once
// BasicPipelineRunner<Backend>'s member definitions, included where it is
// instantiated (src/parallel/pipeline.cpp for the CPU, src/gpu/ for CUDA).
#include <map>
#include <set>

#include "kumiko/core/error.h"
#include "kumiko/parallel/pipeline.h"

namespace kumiko::parallel {

template <typename Bk>
BasicPipelineRunner<Bk>::BasicPipelineRunner(Model& model, comm::Communicator& pp, ScheduleKind kind,
                               int micro_batches, int64_t B, int64_t T)
    : model_(model), pp_(pp), kind_(kind), m_(micro_batches), B_(B), T_(T),
      rows_(model.activation_rows(B, T)), C_(model.dims().C) {
  const int chunks = model.num_chunks();
  actions_ = build_schedule(kind, pp.size(), pp.rank(), micro_batches, chunks);
  slots_ = activation_slots(actions_, micro_batches, chunks);
  KUMIKO_CHECK(model.pipeline_stage().slots >= slots_, "the model has ", model.pipeline_stage().slots,
               " activation sets per chunk; the schedule needs ", slots_);
  inputs_.assign(m_, std::vector<int32_t>(B * T));
  targets_.assign(m_, std::vector<int32_t>(B * T));
  const int64_t n = pipeline_buffer_elements(chunks, m_, rows_, C_);
  buffers_ = static_cast<Act*>(model.backend().allocate(static_cast<size_t>(n) * sizeof(Act)));
}

// Unique per (receiving stage, micro-batch, direction); micro-batch m_ is evaluation.
template <typename Bk>
int BasicPipelineRunner<Bk>::tag(int dst_stage, int mb, int dir) const { return (dst_stage * (m_ + 1) + mb) * 2 + dir; }

template <typename Bk>
double BasicPipelineRunner<Bk>::run_step(const BatchFn& batch, double loss_scale) {
  const int pp = pp_.size(), rank = pp_.rank();
  for (int mb = 0; mb < m_; ++mb) batch(mb, inputs_[mb].data(), targets_[mb].data());
  const int64_t n = rows_ * C_;
  double loss = 0;
  // Sends do not block the sender's next compute. A sent buffer (a slot's output or
  // input gradient) is next written by a later micro-batch using the same slot, so
  // pending sends are completed before any compute that reuses a slot.
  std::map<std::pair<int, int>, std::vector<std::unique_ptr<comm::Request>>> sends;  // by (chunk, slot)
  auto settle = [&](int c, int slot) {  // completes the sends reading this activation set
    for (auto& r : sends[{c, slot}]) r->wait();
    sends[{c, slot}].clear();
  };
  for (const Action& a : actions_) {
    const int c = a.virtual_stage, mb = a.micro_batch;
    const int slot = mb % slots_;  // the activation set of this micro-batch
    const int own_stage = c * pp + rank;
    switch (a.type) {
      case ActionType::forward:
        settle(c, slot);
        loss += model_.stage_forward(c, slot, inputs_[mb].data(), targets_[mb].data(), B_, T_, loss_scale,
                                     act_in(c, mb), true);
        break;
      case ActionType::send_activation:
        sends[{c, slot}].push_back(model_.backend().isend(pp_, model_.stage_output(c, slot), n, a.peer_stage % pp, tag(a.peer_stage, mb, 0)));
        break;
      case ActionType::recv_activation:
        model_.backend().recv(pp_, act_in(c, mb), n, a.peer_stage % pp, tag(own_stage, mb, 0));
        break;
      case ActionType::backward:
        settle(c, slot);
        model_.stage_backward(c, slot, inputs_[mb].data(), B_, T_, grad_in(c, mb));
        break;
      case ActionType::send_gradient:
        sends[{c, slot}].push_back(model_.backend().isend(pp_, model_.stage_input_grad(c, slot), n, a.peer_stage % pp, tag(a.peer_stage, mb, 1)));
        break;
      case ActionType::recv_gradient:
        model_.backend().recv(pp_, grad_in(c, mb), n, a.peer_stage % pp, tag(own_stage, mb, 1));
        break;
    }
  }
  for (auto& [key, pending] : sends)
    for (auto& r : pending) r->wait();
  return loss;
}

template <typename Bk>
double BasicPipelineRunner<Bk>::run_forward(const int32_t* inputs, const int32_t* targets) {
  const int pp = pp_.size(), rank = pp_.rank();
  const int chunks = model_.num_chunks();
  const int stages = pp * chunks;
  const int64_t n = rows_ * C_;
  double loss = 0;
  for (int s = 0; s < stages; ++s) {
    if (s % pp != rank) continue;
    const int c = s / pp;
    if (s > 0) model_.backend().recv(pp_, act_in(c, 0), n, (s - 1) % pp, tag(s, m_, 0));
    loss += model_.stage_forward(c, 0, inputs, targets, B_, T_, 0.0, act_in(c, 0), false);
    if (s + 1 < stages) model_.backend().isend(pp_, model_.stage_output(c, 0), n, (s + 1) % pp, tag(s + 1, m_, 0))->wait();
  }
  return loss;
}

template <typename Bk>
double BasicPipelineRunner<Bk>::bubble_fraction() const {
  return parallel::bubble_fraction(kind_, pp_.size(), m_, model_.num_chunks());
}

}  // namespace kumiko::parallel
