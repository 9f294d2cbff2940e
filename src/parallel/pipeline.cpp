#include "kumiko/parallel/pipeline.h"

#include <algorithm>
#include <set>

#include "kumiko/core/error.h"

namespace kumiko::parallel {

int activation_slots(const std::vector<Action>& actions, int micro_batches, int chunks) {
  for (int slots = 1; slots < micro_batches; ++slots) {
    bool ok = true;
    std::vector<std::set<int>> live(chunks);  // micro-batches forwarded, not yet backwarded
    for (const Action& a : actions) {
      auto& l = live[a.virtual_stage];
      if (a.type == ActionType::forward) {
        for (int other : l) ok = ok && other % slots != a.micro_batch % slots;
        l.insert(a.micro_batch);
      } else if (a.type == ActionType::backward) {
        l.erase(a.micro_batch);
      }
    }
    if (ok) return slots;
  }
  return micro_batches;
}

PipelineRunner::PipelineRunner(model::Transformer<float>& model, comm::Communicator& pp, ScheduleKind kind,
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
  act_in_.assign(chunks, std::vector<std::vector<float>>(m_, std::vector<float>(rows_ * C_)));
  grad_in_.assign(chunks, std::vector<std::vector<float>>(m_, std::vector<float>(rows_ * C_)));
}

// Unique per (receiving stage, micro-batch, direction); micro-batch m_ is evaluation.
int PipelineRunner::tag(int dst_stage, int mb, int dir) const { return (dst_stage * (m_ + 1) + mb) * 2 + dir; }

double PipelineRunner::run_step(const BatchFn& batch, float loss_scale) {
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
                                     act_in_[c][mb].data(), true);
        break;
      case ActionType::send_activation:
        sends[{c, slot}].push_back(pp_.isend(model_.stage_output(c, slot), n, a.peer_stage % pp, tag(a.peer_stage, mb, 0)));
        break;
      case ActionType::recv_activation:
        pp_.recv(act_in_[c][mb].data(), n, a.peer_stage % pp, tag(own_stage, mb, 0));
        break;
      case ActionType::backward:
        settle(c, slot);
        model_.stage_backward(c, slot, inputs_[mb].data(), B_, T_, grad_in_[c][mb].data());
        break;
      case ActionType::send_gradient:
        sends[{c, slot}].push_back(pp_.isend(model_.stage_input_grad(c, slot), n, a.peer_stage % pp, tag(a.peer_stage, mb, 1)));
        break;
      case ActionType::recv_gradient:
        pp_.recv(grad_in_[c][mb].data(), n, a.peer_stage % pp, tag(own_stage, mb, 1));
        break;
    }
  }
  for (auto& [key, pending] : sends)
    for (auto& r : pending) r->wait();
  return loss;
}

double PipelineRunner::run_forward(const int32_t* inputs, const int32_t* targets) {
  const int pp = pp_.size(), rank = pp_.rank();
  const int chunks = model_.num_chunks();
  const int stages = pp * chunks;
  const int64_t n = rows_ * C_;
  double loss = 0;
  for (int s = 0; s < stages; ++s) {
    if (s % pp != rank) continue;
    const int c = s / pp;
    if (s > 0) pp_.recv(act_in_[c][0].data(), n, (s - 1) % pp, tag(s, m_, 0));
    loss += model_.stage_forward(c, 0, inputs, targets, B_, T_, 0.0f, act_in_[c][0].data(), false);
    if (s + 1 < stages) pp_.send(model_.stage_output(c, 0), n, (s + 1) % pp, tag(s + 1, m_, 0));
  }
  return loss;
}

double PipelineRunner::bubble_fraction() const {
  return parallel::bubble_fraction(kind_, pp_.size(), m_, model_.num_chunks());
}

model::LogicalTensors gather_stages(comm::Communicator& pp, const std::vector<model::ParameterSpec>& all_specs,
                                    const std::vector<std::vector<std::string>>& names_by_stage,
                                    std::map<std::string, std::vector<float>> mine) {
  const std::set<std::string> on_first(names_by_stage[0].begin(), names_by_stage[0].end());
  std::map<std::string, int64_t> numel;
  for (const auto& s : all_specs) numel[s.name] = numel_of(s.shape);
  for (int s = 1; s < pp.size(); ++s) {
    int tag = 0;
    for (const auto& name : names_by_stage[s]) {
      if (on_first.count(name)) continue;
      if (pp.rank() == s) pp.send(mine.at(name).data(), numel.at(name), 0, tag);
      if (pp.rank() == 0) {
        auto& dst = mine[name];
        dst.resize(numel.at(name));
        pp.recv(dst.data(), numel.at(name), s, tag);
      }
      ++tag;
    }
  }
  model::LogicalTensors out;
  if (pp.rank() != 0) return out;
  for (const auto& spec : all_specs) {
    auto it = mine.find(spec.name);
    KUMIKO_CHECK(it != mine.end(), "pipeline gather: no stage holds ", spec.name);
    out.push_back(std::move(it->second));
  }
  return out;
}

}  // namespace kumiko::parallel
