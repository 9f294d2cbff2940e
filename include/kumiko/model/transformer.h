#pragma once
// The decoder-only transformer, GPT-2 or Llama family ([model] arch), with an
// explicit forward and backward per layer (no autograd engine).
//
// Templated on the element type: float for training, double for the
// finite-difference gradient checks of the same code path.
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "kumiko/comm/communicator.h"
#include "kumiko/config/config.h"
#include "kumiko/core/tensor.h"
#include "kumiko/model/parameters.h"

namespace kumiko::model {

// Model hyper-parameters resolved from ModelConfig (defaults filled in).
struct Dims {
  bool llama = false;    // false: gpt2
  int64_t L = 0;         // layers
  int64_t Hq = 0;        // query heads
  int64_t Hkv = 0;       // key/value heads
  int64_t D = 0;         // head dim
  int64_t C = 0;         // model width
  int64_t F = 0;         // MLP hidden width
  int64_t V = 0;         // vocabulary
  int64_t max_T = 0;     // learned positions (gpt2)
  bool tied = true;      // head shares the token embedding
  double eps = 1e-5;
  double rope_theta = 10000.0;
  double init_std = 0.02;

  static Dims from(const config::ModelConfig& m);
  int64_t qkv_width() const { return (Hq + 2 * Hkv) * D; }
};

// Tensor parallelism (Megatron-LM, Shoeybi et al. 2019): the tp group this model
// is split over (nullptr = not split) and whether norms and residuals are also
// sharded along the sequence (Korthikanti et al. 2022).
struct TensorParallel {
  comm::Communicator* group = nullptr;
  bool sequence_parallel = false;
  int size() const { return group ? group->size() : 1; }
  int rank() const { return group ? group->rank() : 0; }
};

// Pipeline parallelism: which layers this rank runs. Each chunk is a contiguous
// layer range (a virtual stage); a rank has one chunk, or several when interleaved.
struct PipelineStage {
  std::vector<std::pair<int64_t, int64_t>> chunks;  // [first, last) layers; empty = all layers
  bool has_embedding = true;  // holds virtual stage 0
  bool has_head = true;       // holds the last virtual stage (final norm, head, loss)
  int slots = 1;              // activation sets per chunk: micro-batches in flight
};

// The stage of pipeline rank `rank` of `pp` with `chunks` virtual stages per rank:
// virtual stage s = c * pp + rank holds `layers[s]` layers (empty = equal stages).
PipelineStage pipeline_stage(const Dims& d, int pp, int chunks, int rank, const std::vector<int64_t>& layers,
                             int slots);

// The parameter list of a model (logical names, shapes, init, decay) with the part
// that tensor-parallel rank `rank` of `tp` holds: qkv, fc, gate, up and the
// vocabulary tables by rows (heads / hidden units / vocabulary entries), attention
// and MLP output projections by columns, norms and output biases replicated. With a
// pipeline stage, only that stage's parameters (the last stage of a tied model holds
// a copy of the token embedding for its head).
std::vector<ParameterSpec> parameter_specs(const Dims& d, int tp = 1, int rank = 0,
                                           const PipelineStage* stage = nullptr);

// Parameter indices of one block (-1 where the architecture has none), looked up
// by name with `index_of` (returning -1 for an absent name). Shared by the CPU and
// GPU models so that both read the same tensors.
struct BlockIndex {
  int norm1_w = -1, norm1_b = -1, qkv_w = -1, qkv_b = -1, proj_w = -1, proj_b = -1;
  int norm2_w = -1, norm2_b = -1;
  int fc_w = -1, fc_b = -1, mproj_w = -1, mproj_b = -1;  // gpt2
  int gate_w = -1, up_w = -1, down_w = -1;               // llama
};
BlockIndex block_index(int64_t layer, const std::function<int(const std::string&)>& index_of);

// FLOPs per trained token (forward + backward), PaLM appendix B:
// 6 * N_matmul + 12 * L * Hq * D * T (attention scores and values).
double train_flops_per_token(const Dims& d, int64_t T);

template <typename T>
class Transformer {
 public:
  // Activations are allocated for up to `batch` sequences of up to `seq_len` tokens.
  Transformer(const Dims& dims, int64_t batch, int64_t seq_len, TensorParallel tp = {},
              PipelineStage stage = {});
  ~Transformer();

  const Dims& dims() const { return dims_; }
  ParameterStore<T>& params() { return params_; }
  const ParameterStore<T>& params() const { return params_; }

  // Forward and backward on one micro-batch of B sequences of length Tn (B <= batch,
  // Tn <= seq_len); inputs, targets: [B, Tn]. Gradients are ACCUMULATED into
  // params().grad with the loss scaled by `loss_scale` (e.g. 1 / global tokens).
  // Returns the mean cross-entropy of this micro-batch (unscaled).
  double forward_backward(const int32_t* inputs, const int32_t* targets, int64_t B, int64_t Tn,
                          T loss_scale);
  // Mean cross-entropy without touching gradients.
  double loss(const int32_t* inputs, const int32_t* targets, int64_t B, int64_t Tn);
  // Logits of the last position of each sequence: out [B, V] (all of the
  // vocabulary, gathered over the tp group).
  void last_logits(const int32_t* inputs, int64_t B, int64_t Tn, T* out);
  const TensorParallel& tensor_parallel() const { return tp_; }
  const PipelineStage& pipeline_stage() const { return stage_; }

  // Pipeline stages. stage_forward runs chunk `chunk` on activation set `slot`: from
  // the token embedding when the chunk starts the model, else from `input` [rows, C]
  // (the previous stage's output; rows = activation_rows(B, Tn)). When the chunk ends
  // the model it computes the loss (with `train`, the logits' gradient too) and
  // returns the loss sum over the micro-batch's tokens; else 0.
  double stage_forward(int chunk, int slot, const int32_t* inputs, const int32_t* targets, int64_t B,
                       int64_t Tn, T loss_scale, const T* input, bool train);
  const T* stage_output(int chunk, int slot) const;
  // Backward of chunk `chunk` on `slot`: from the loss when the chunk ends the model,
  // else from `output_grad` [rows, C]; leaves the gradient w.r.t. its input in
  // stage_input_grad (unless the chunk starts the model).
  void stage_backward(int chunk, int slot, const int32_t* inputs, int64_t B, int64_t Tn, const T* output_grad);
  const T* stage_input_grad(int chunk, int slot) const;
  int64_t activation_rows(int64_t B, int64_t Tn) const;
  int num_chunks() const { return static_cast<int>(stage_.chunks.size()); }

  // Called during backward with each parameter index as soon as its gradient for
  // this micro-batch is complete (data parallelism starts reducing buckets then).
  void set_grad_ready_hook(std::function<void(int)> hook) { grad_ready_ = std::move(hook); }

 private:
  struct Activations;
  struct Index;
  void forward(int chunk, int slot, const int32_t* inputs, int64_t B, int64_t Tn, const T* input);
  void backward(int chunk, int slot, const int32_t* inputs, int64_t B, int64_t Tn, const T* output_grad);
  bool starts_model(int chunk) const;
  bool ends_model(int chunk) const;
  void notify(std::initializer_list<int> indices);
  // Cross-entropy over the vocabulary shards of the tp group; with dlogits the
  // gradient (softmax - onehot) * scale overwrites the logits. Returns the loss sum.
  double vocab_parallel_cross_entropy(Activations& a, const int32_t* targets, int64_t N, bool backward, T scale);
  // Sequence parallelism helpers: full [N, C] <-> this rank's [N/tp, C] rows.
  void gather_sequence(const T* shard, T* full, int64_t N, int64_t C);
  void scatter_sequence_sum(T* full, T* shard, int64_t N, int64_t C);
  void tp_sum(T* x, int64_t n);  // all-reduce over tp (no-op without tp)

  Dims dims_;
  TensorParallel tp_;
  PipelineStage stage_;
  int64_t batch_;
  int64_t seq_len_;
  ParameterStore<T> params_;
  std::unique_ptr<Index> index_;
  std::vector<std::vector<std::unique_ptr<Activations>>> acts_;  // [chunk][slot]
  std::function<void(int)> grad_ready_;
  std::unordered_map<int, std::vector<T>> stash_;  // sequence parallelism: see backward()
};

}  // namespace kumiko::model
