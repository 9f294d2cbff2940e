#pragma once
// The transformer on one GPU ([backend] device = cuda): the same model, parameter
// list and flat parameter layout as kumiko::model::Transformer (tp = pp = 1), run by
// kumiko's CUDA kernels (kernels/cuda) or the vendor reference paths, in fp32 or bf16
// mixed precision:
//   dtype = fp32  weights, activations, gradients and AdamW state in fp32;
//   dtype = bf16  bf16 weights (a working copy) and activations, fp32 master weights,
//                 gradients and AdamW moments, fp32 softmax, statistics and loss.
// All device memory comes from one arena sized at construction. Data parallelism:
// with an NCCL communicator, gradient buckets are all-reduced on NCCL's stream while
// the backward of earlier layers still runs (events order the two streams).
//
// This header has no CUDA types, so host code (the trainer) includes it freely.
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "kumiko/comm/communicator.h"
#include "kumiko/model/transformer.h"

namespace kumiko::gpu {

struct GpuOptions {
  std::string dtype = "fp32";        // fp32|bf16
  std::string matmul = "kumiko";     // kumiko|cublas
  std::string attention = "kumiko";  // kumiko|cudnn (bf16 only)
};

struct AdamWHyper {
  double lr = 0, beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0;
};

class GpuModel {
 public:
  virtual ~GpuModel() = default;

  // Parameters in the flat layout of ParameterStore<float> for
  // model::parameter_specs(dims) (each tensor starts on a multiple of 16 floats; host
  // arrays of total_numel() floats): fp32 master weights and the AdamW moments.
  virtual int64_t total_numel() const = 0;
  virtual void set_parameters(const float* values) = 0;
  virtual void get_parameters(float* values) = 0;
  virtual void set_moments(const float* m, const float* v) = 0;
  virtual void get_moments(float* m, float* v) = 0;
  virtual void get_grads(float* grads) = 0;

  virtual void zero_grads() = 0;
  // Forward and backward of one micro-batch (host token arrays [B, Tn]); gradients
  // accumulate (fp32) with the loss scaled by loss_scale. Returns the mean loss.
  // With `last_micro_batch` and data parallelism on, gradient buckets start their
  // all-reduce during this backward.
  virtual double forward_backward(const int32_t* inputs, const int32_t* targets, int64_t B, int64_t Tn,
                                  float loss_scale, bool last_micro_batch) = 0;
  virtual double loss(const int32_t* inputs, const int32_t* targets, int64_t B, int64_t Tn) = 0;

  // Data parallelism over `nccl` (an NCCL communicator of the dp group; not owned).
  virtual void enable_data_parallel(comm::Communicator* nccl, int64_t bucket_bytes) = 0;
  // Waits for every bucket's all-reduce (starting those not started). Returns seconds.
  virtual double finish_reduction() = 0;
  // L2 norm of the whole gradient (after the reduction: identical on every rank).
  virtual double grad_norm() = 0;
  // AdamW (PyTorch semantics) on every tensor in one launch; gradients multiplied
  // by grad_scale (clipping); `step` counts from 1.
  virtual void adamw(const AdamWHyper& h, double grad_scale, int64_t step) = 0;
  // Testing (train.inject_nan_step): makes gradient element 0 a NaN.
  virtual void poison_gradient() = 0;

  virtual std::string describe() const = 0;  // device, dtype, paths, arena size
};

// Selects the GPU (node-local rank % visible devices) and builds the model for
// micro-batches of up to `batch` sequences of `seq_len` tokens. Throws UserError
// for an unsupported option combination or when the GPU memory does not suffice.
std::unique_ptr<GpuModel> make_gpu_model(const model::Dims& dims, int64_t batch, int64_t seq_len,
                                         const GpuOptions& options);
// Device memory (bytes) the GPU model takes in its arena for micro-batches of
// `batch` x `seq_len`: parameters, optimizer state, activations and kernel workspace.
// Computed on the host, no GPU needed; cuDNN's own workspace (attention = cudnn) and
// cuBLASLt's (32 MiB) are not included.
size_t planned_device_bytes(const model::Dims& dims, int64_t batch, int64_t seq_len, const GpuOptions& options);

// The flat ranges whose gradients backward completes together, in the order it
// completes them: [final norm, head], block L-1, ..., block 0, [embeddings]. Each is
// contiguous and adjacent to the next, and together they cover the flat layout.
std::vector<std::pair<int64_t, int64_t>> backward_units(const model::Dims& dims);
// Data-parallel buckets: runs of consecutive units holding at least bucket_bytes of
// fp32 gradients (the last may hold less); a bucket is reduced when backward has
// completed its `last_unit`.
struct GradientBucket {
  int64_t begin = 0, end = 0;  // flat range
  int last_unit = 0;
};
std::vector<GradientBucket> gradient_buckets(const std::vector<std::pair<int64_t, int64_t>>& units,
                                             int64_t bucket_bytes);

// True when this build has the CUDA backend (kumiko was configured with nvcc).
bool cuda_built();
// Devices visible: 0 without the CUDA backend or without devices, -1 when the CUDA
// driver cannot be initialised (no driver, or one too old for this build).
int visible_devices();

}  // namespace kumiko::gpu
