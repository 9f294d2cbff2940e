#pragma once
// Runs one training step's pipeline schedule (parallel/schedule.h) on this rank:
// forward and backward of the rank's model chunks on each micro-batch, with the
// activations and their gradients sent to the neighbouring stages over the pp
// group: non-blocking sends (waited for at the end of the step), blocking receives
// where the schedule needs the data; the schedules are deadlock-free even under
// rendezvous semantics.
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "kumiko/comm/communicator.h"
#include "kumiko/model/sharding.h"
#include "kumiko/model/transformer.h"
#include "kumiko/parallel/schedule.h"

namespace kumiko::parallel {

// The fewest activation sets per chunk such that micro-batch mb can use set
// mb % slots without overwriting one still waiting for its backward (1f1b: pp - rank;
// gpipe: all micro-batches).
int activation_slots(const std::vector<Action>& actions, int micro_batches, int chunks);
// Elements (of the activation type) of a pipeline runner's send/receive buffers: an
// activation and a gradient of `rows` x C per chunk and micro-batch.
inline int64_t pipeline_buffer_elements(int chunks, int micro_batches, int64_t rows, int64_t C) {
  return int64_t{chunks} * micro_batches * 2 * rows * C;
}

// Works on either backend's buffers: activations and their gradients travel
// between stages through the backend's collectives (host-staged or NCCL on a GPU).
template <typename Backend>
class BasicPipelineRunner {
 public:
  using Model = model::BasicTransformer<Backend>;
  using Act = typename Backend::Act;
  // `micro_batches` micro-batches of B sequences of T tokens per step.
  BasicPipelineRunner(Model& model, comm::Communicator& pp, ScheduleKind kind, int micro_batches, int64_t B,
                      int64_t T);
  // Fills inputs and targets [B, T] of micro-batch `mb` of this step.
  using BatchFn = std::function<void(int mb, int32_t* inputs, int32_t* targets)>;
  // One step: every micro-batch forward and backward. Returns the loss summed over
  // all tokens of the step's micro-batches on the last stage, 0 on other stages.
  double run_step(const BatchFn& batch, double loss_scale);
  // Forward only through every stage (evaluation) of one micro-batch; the loss sum
  // on the last stage, 0 elsewhere.
  double run_forward(const int32_t* inputs, const int32_t* targets);
  double bubble_fraction() const;

 private:
  int tag(int dst_stage, int mb, int dir) const;
  Act* act_in(int c, int mb) { return buffers_ + ((static_cast<int64_t>(c) * m_ + mb) * 2) * rows_ * C_; }
  Act* grad_in(int c, int mb) { return act_in(c, mb) + rows_ * C_; }

  Model& model_;
  comm::Communicator& pp_;
  ScheduleKind kind_;
  int m_;
  int64_t B_, T_, rows_, C_;
  std::vector<Action> actions_;
  int slots_ = 1;
  std::vector<std::vector<int32_t>> inputs_, targets_;  // [m][B*T]
  Act* buffers_ = nullptr;  // backend memory: [chunk][m] x (input activation, output gradient) [rows*C]
};
using PipelineRunner = BasicPipelineRunner<backend::Cpu<float>>;

// Assembles logical tensors held by different pipeline stages on pp rank 0: each
// stage's tensors that stage 0 does not hold are sent to it over `pp` (a collective
// over the pp group). `mine` are this rank's logical tensors by name. On pp rank 0
// returns every tensor of `all_specs` in that order; elsewhere an empty list.
model::LogicalTensors gather_stages(comm::Communicator& pp, const std::vector<model::ParameterSpec>& all_specs,
                                    const std::vector<std::vector<std::string>>& names_by_stage,
                                    std::map<std::string, std::vector<float>> mine);

}  // namespace kumiko::parallel
