#pragma once
// The engine: one rank's model, data-parallel reduction, pipeline runner and
// optimizer over a backend, behind an interface with no backend types. The trainer
// drives it per step (zero grads, forward/backward over the micro-batches, finish
// the reduction, grad norm, AdamW step, gather/scatter for checkpoints, evaluation)
// and does not know which backend runs. The engines are the CPU (make_cpu_engine,
// parallel/engine.cpp) and CUDA (gpu::make_cuda_engine, src/gpu/engine_cuda.cpp)
// instantiations of the one template (src/parallel/engine_impl.h).
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "kumiko/comm/communicator.h"
#include "kumiko/config/config.h"
#include "kumiko/model/parameters.h"
#include "kumiko/model/transformer.h"
#include "kumiko/ops/matmul_bf16.h"
#include "kumiko/parallel/grid.h"

namespace kumiko::parallel {

struct EngineSetup {
  const config::Config* config = nullptr;
  ProcessGrid* grid = nullptr;          // host (MPI or local) groups
  model::Dims dims;
  model::PipelineStage stage;           // this rank's stage (pp > 1), else empty
  int64_t micro_batch = 1, seq_len = 1, micro_steps = 1;
  comm::Communicator* embed_group = nullptr;  // tied embedding across stages: first and last stage
};

class Engine {
 public:
  virtual ~Engine() = default;
  // Parameters in the host flat layout (model/sharding.h turns them into logical
  // tensors). On a device backend a mirror: download_parameters() before reading it,
  // upload_parameters() after writing it (both no-ops on the CPU).
  virtual model::ParameterStore<float>& params() = 0;
  virtual const model::PipelineStage& stage() const = 0;
  virtual void download_parameters() = 0;
  virtual void upload_parameters() = 0;
  // The CPU model itself (samples during training), nullptr on other backends.
  virtual model::Transformer<float>* cpu_model() = 0;

  virtual void zero_grads() = 0;
  virtual void poison_gradient() = 0;  // testing (train.inject_nan_step): gradient element 0 becomes NaN
  // Fills inputs and targets [micro_batch, seq_len] of micro-batch `micro` of this step.
  using BatchFn = std::function<void(int64_t micro, int32_t* inputs, int32_t* targets)>;
  // Forward and backward over this rank's micro-batches, gradients accumulated with
  // the loss scaled by loss_scale; the data-parallel buckets start reducing during
  // the last backward. Returns the mean loss of this dp rank's tokens (the same on
  // every pipeline stage).
  virtual double forward_backward(const BatchFn& fill, double loss_scale) = 0;
  virtual double finish_reduction() = 0;  // seconds waited
  virtual double grad_norm() = 0;         // global, the same on every rank
  virtual double step(double lr, double grad_scale) = 0;  // AdamW; returns seconds of communication
  virtual int64_t optimizer_steps() const = 0;
  virtual void set_optimizer_steps(int64_t steps) = 0;
  // AdamW moments in the flat layout (collective over dp with ZeRO-1).
  virtual void gather_moments(std::vector<float>& m, std::vector<float>& v) = 0;
  virtual void scatter_moments(const float* m, const float* v) = 0;
  // The moments in the host flat layout where they already live there whole (the CPU
  // backend without ZeRO-1): checkpoints read and write them in place, no copy. False
  // otherwise (use gather_moments / scatter_moments).
  virtual bool host_moments(float** m, float** v) = 0;
  // Sum of the token losses of one micro-batch, forward only (0 on other than the
  // last pipeline stage).
  virtual double eval_loss_sum(const int32_t* inputs, const int32_t* targets) = 0;
  virtual double bubble_fraction() const = 0;
  virtual size_t arena_bytes() const = 0;
  virtual std::string describe() const = 0;
};

// The CPU engine (the CUDA one: gpu/engine.h). Throws UserError for a layout the
// model cannot be split into.
std::unique_ptr<Engine> make_cpu_engine(const EngineSetup& setup);

// The bf16 GEMM a CPU run of `cfg` uses (backend.bf16_gemm: a named implementation, or
// "auto": cpu::bf16_gemm_default, native bf16 GEMMs where the CPU has bf16
// instructions, the emulated one elsewhere); nullptr: "auto". kumiko plan times with it.
cpu::Bf16Gemm bf16_gemm_of(const config::Config* cfg);

}  // namespace kumiko::parallel
