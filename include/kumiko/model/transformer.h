#pragma once
// The decoder-only transformer, GPT-2 or Llama family ([model] arch), with an
// explicit forward and backward per layer (no autograd engine).
//
// Templated on the backend (CPU: float for training, double for the
// finite-difference gradient checks; CUDA: fp32 or bf16 mixed precision).
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "kumiko/backend/cpu.h"
#include "kumiko/comm/communicator.h"
#include "kumiko/core/arena.h"
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

// Activation recomputation (train.recompute): what backward re-creates instead of
// keeping from forward. Attention never keeps its T x T scores (its backward
// recomputes them from the log-sum-exp), so Korthikanti et al.'s selective
// recomputation of attention's internals is always on.
//   none:      every layer keeps its norms' outputs, qkv, attention output, MLP
//              pre-activations and activations.
//   selective: the cheap, memory-bound part is recomputed: the norms' outputs and
//              the MLP activation (GELU / SwiGLU). No GEMM runs twice.
//   full:      a layer keeps only its input; backward re-runs the layer's forward
//              from it up to the MLP activation (all of a forward but the MLP's
//              down-projection, Chen et al. 2016).
enum class Recompute { none, selective, full };
Recompute parse_recompute(const std::string& name);  // UserError naming train.recompute
const char* recompute_name(Recompute r);

// Everything the arena plan of a model depends on (BasicTransformer::plan_arena).
struct BufferLayout {
  Dims dims;
  int64_t batch = 1, seq_len = 1;  // the largest micro-batch
  int tp = 1, tp_rank = 0;
  bool sequence_parallel = false;
  PipelineStage stage;  // chunks empty = the whole model
  Recompute recompute = Recompute::none;
};

// The model's arena by use (bytes, alignment included). `activations` is what is
// kept between forward and backward, for all chunks and slots; `workspace` the
// scratch shared by them.
struct ArenaPlan {
  size_t total = 0, parameters = 0, gradients = 0, activations = 0, workspace = 0;
  size_t per_slot = 0;  // activations kept by one micro-batch in flight (all chunks)
};

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

// The transformer over a backend (backend/cpu.h, and the CUDA backend in
// src/gpu/): the layers' sequence, tensor-parallel collectives, pipeline stage
// slicing and the loss are written once here; the backend owns memory, kernels and
// streams and does not know about layers. Activations of every chunk and slot,
// the scratch buffers, and (off the host) the parameters and gradients are carved
// from one arena planned at construction.
//
// Parameters: params() is the host ParameterStore in the logical flat layout
// (flat_offsets). On a host backend it is the live memory; on a device backend it
// is a mirror refreshed by download_parameters() / upload_parameters(), while the
// model trains on the backend's master weights, working copy and gradients
// (flat_master(), flat_work(), flat_grads(), same offsets).
template <typename Backend>
class BasicTransformer {
 public:
  using Act = typename Backend::Act;
  using Grad = typename Backend::Grad;
  using Stat = typename Backend::Stat;
  using T = Grad;  // the element type of params()

  // Activations are allocated for up to `batch` sequences of up to `seq_len` tokens.
  // `backend` (not owned; nullptr: the model makes its own) must outlive the model.
  BasicTransformer(const Dims& dims, int64_t batch, int64_t seq_len, TensorParallel tp = {},
                   PipelineStage stage = {}, Backend* backend = nullptr, Recompute recompute = Recompute::none);

  // The arena a model of this layout on this backend carves, without building it:
  // the same planning code as the constructor (kumiko plan sizes memory with it).
  static ArenaPlan plan_arena(const BufferLayout& layout);
  ~BasicTransformer();
  BasicTransformer(const BasicTransformer&) = delete;
  BasicTransformer& operator=(const BasicTransformer&) = delete;

  const Dims& dims() const { return dims_; }
  Recompute recompute() const { return recompute_; }
  Backend& backend() { return *backend_; }
  ParameterStore<T>& params() { return params_; }
  const ParameterStore<T>& params() const { return params_; }
  // The backend's parameter memory in the flat layout of params() (on a host
  // backend the same memory as params()).
  Grad* flat_master() { return master_; }
  Act* flat_work() { return work_; }
  Grad* flat_grads() { return grads_; }
  int64_t flat_size() const { return params_.total_numel(); }
  int64_t offset(int i) const { return offsets_[i]; }
  // Bytes of the backend arena (activations, scratch and, off the host, parameters).
  size_t arena_bytes() const { return arena_bytes_; }
  void download_parameters();  // backend master weights -> params() values
  void upload_parameters();    // params() values -> backend master weights and working copy
  void download_grads();       // backend gradients -> params() grads
  // Starts a step's gradients at zero. On the CPU backends (kLazyGradZero) nothing is
  // written here: each gradient is marked unwritten, and its first writer of the step
  // either overwrites it (a weight-gradient GEMM with beta = 0) or zeroes it before
  // accumulating; forward_backward() zeroes any it did not reach. The same bits as
  // zeroing everything first, without a pass over all gradients and the GEMMs' reads
  // of them (2 x 4 bytes a parameter; ~2 % of a GPT-2-124M-shaped bf16 step on 2 cores).
  void zero_grads();
  // Zeroes the gradients still marked unwritten. forward_backward() ends with it;
  // stage_backward() does not (a stage's chunks are written by separate calls), so the
  // engine calls it after a pipeline step's backwards, before anything reads the
  // gradients.
  void settle_grads();

  // Forward and backward on one micro-batch of B sequences of length Tn (B <= batch,
  // Tn <= seq_len); inputs, targets: host arrays [B, Tn]. Gradients are ACCUMULATED
  // with the loss scaled by `loss_scale` (e.g. 1 / global tokens). Returns the mean
  // cross-entropy of this micro-batch (unscaled).
  double forward_backward(const int32_t* inputs, const int32_t* targets, int64_t B, int64_t Tn,
                          double loss_scale);
  // Mean cross-entropy without touching gradients.
  double loss(const int32_t* inputs, const int32_t* targets, int64_t B, int64_t Tn);
  // Logits of the last position of each sequence: host out [B, V] (all of the
  // vocabulary, gathered over the tp group).
  void last_logits(const int32_t* inputs, int64_t B, int64_t Tn, T* out);
  const TensorParallel& tensor_parallel() const { return tp_; }
  const PipelineStage& pipeline_stage() const { return stage_; }

  // Incremental decoding with a key/value cache (sampling), through the same layers:
  // begin_decoding(capacity) empties the cache (sized for `capacity` positions, reused
  // while large enough); decode(token, logits) feeds `token` at the next position and
  // writes the next-token logits [V] to the host array `logits`. The whole model on
  // one rank only (tp = pp = 1).
  void begin_decoding(int64_t capacity);
  void decode(int32_t token, T* logits);
  int64_t decode_position() const { return decode_pos_; }
  int64_t decode_capacity() const { return decode_capacity_; }

  // Pipeline stages. stage_forward runs chunk `chunk` on activation set `slot`: from
  // the token embedding when the chunk starts the model, else from `input` [rows, C]
  // in backend memory (the previous stage's output; rows = activation_rows(B, Tn)).
  // When the chunk ends the model it computes the loss (with `train`, the logits'
  // gradient too) and returns the loss sum over the micro-batch's tokens; else 0.
  double stage_forward(int chunk, int slot, const int32_t* inputs, const int32_t* targets, int64_t B,
                       int64_t Tn, double loss_scale, const Act* input, bool train);
  const Act* stage_output(int chunk, int slot) const;
  // Backward of chunk `chunk` on `slot`: from the loss when the chunk ends the model,
  // else from `output_grad` [rows, C] (backend memory); leaves the gradient w.r.t.
  // its input in stage_input_grad (unless the chunk starts the model).
  void stage_backward(int chunk, int slot, const int32_t* inputs, int64_t B, int64_t Tn, const Act* output_grad);
  const Act* stage_input_grad(int chunk, int slot) const;
  int64_t activation_rows(int64_t B, int64_t Tn) const;
  int num_chunks() const { return static_cast<int>(stage_.chunks.size()); }

  // Called during backward with each parameter index as soon as its gradient for
  // this micro-batch is complete (data parallelism starts reducing buckets then).
  void set_grad_ready_hook(std::function<void(int)> hook) { grad_ready_ = std::move(hook); }

 private:
  struct Activations;
  struct Index;
  // The arena's buffers. Recomputed activations point into one layer's workspace
  // shared by every layer, chunk and slot.
  struct Buffers {
    Grad* master = nullptr;
    Grad* grads = nullptr;
    Act* work = nullptr;
    std::vector<Grad*> stash;
    std::vector<std::vector<std::unique_ptr<Activations>>> acts;  // [chunk][slot]
  };
  static void plan(Arena& arena, const BufferLayout& layout, Buffers& out);
  // This rank's sizes for a micro-batch of Bn x Tn tokens: tp size, sequence
  // parallelism, tokens N and residual rows Ns, widths C, F, W (qkv), A (attention
  // output), V, heads Hq and Hkv (the split ones divided by tp).
  struct Shapes {
    int n;
    bool sp;
    int64_t N, Ns, C, F, W, A, V, Hq, Hkv;
  };
  Shapes shapes(int64_t Bn, int64_t Tn) const;
  Act* wt(int i) const { return i < 0 ? nullptr : work_ + offsets_[i]; }
  BufferLayout layout() const;
  // Row-parallel linear into out [Ns, C]; norm of rows x [Ns, C] into out [N, C]
  // (gathered along the sequence with sequence parallelism).
  void row_parallel(Activations& a, const Shapes& s, Act* out, const Act* x, int w, int bias, int64_t in);
  void norm(Activations& a, const Shapes& s, Act* out, Stat* mean, Stat* rstd, const Act* x, int w, int b);
  // Layer l (index j in its chunk) from a.residual[j] into `out` [Ns, C]; with out =
  // nullptr (recomputation) it stops after the MLP activation.
  void block_forward(Activations& a, const Shapes& s, int64_t l, int64_t j, int64_t Bn, int64_t Tn, int64_t pos0,
                     Act* out);
  // Parameter i's gradient for an op that accumulates into it (zeroed first if this
  // step has not written it yet); nullptr for i < 0.
  Grad* gr(int i);
  // For a weight-gradient GEMM: the gradient, and whether the GEMM overwrites it (its
  // first write this step).
  std::pair<Grad*, bool> gw(int i);
  // pos0 >= 0: decoding one token at position pos0 against the KV cache.
  void forward(int chunk, int slot, const int32_t* inputs, int64_t B, int64_t Tn, const Act* input,
               int64_t pos0 = -1);
  void backward(int chunk, int slot, const int32_t* inputs, int64_t B, int64_t Tn, const Act* output_grad);
  bool starts_model(int chunk) const;
  bool ends_model(int chunk) const;
  void notify(std::initializer_list<int> indices);
  void check_ids(const int32_t* ids, int64_t n, const char* what) const;  // UserError outside [0, V)
  // Cross-entropy over the vocabulary shards of the tp group; with backward the
  // gradient (softmax - onehot) * scale overwrites the logits. Returns the loss sum.
  double vocab_parallel_cross_entropy(Activations& a, const int32_t* targets, int64_t N, bool backward, double scale);
  // Sequence parallelism helpers: full [N, C] <-> this rank's [N/tp, C] rows.
  void gather_sequence(const Act* shard, Act* full, int64_t N, int64_t C);
  void scatter_sequence_sum(Act* full, Act* shard, int64_t N, int64_t C);
  template <typename X>
  void tp_sum(X* x, int64_t n);  // all-reduce over tp (no-op without tp)

  Dims dims_;
  Recompute recompute_ = Recompute::none;
  TensorParallel tp_;
  PipelineStage stage_;
  int64_t batch_;
  int64_t seq_len_;
  std::unique_ptr<Backend> own_backend_;
  Backend* backend_;
  ParameterStore<T> params_;
  std::vector<int64_t> offsets_;
  Grad* master_ = nullptr;
  Act* work_ = nullptr;
  Grad* grads_ = nullptr;
  std::vector<uint8_t> unwritten_;  // by parameter index: not yet written this step (kLazyGradZero)
  bool grads_zeroed_ = false;       // the whole buffer (padding too) zeroed once
  size_t arena_bytes_ = 0;
  std::unique_ptr<Index> index_;
  std::vector<std::vector<std::unique_ptr<Activations>>> acts_;  // [chunk][slot]
  std::function<void(int)> grad_ready_;
  // Sequence parallelism: gradients of replicated parameters set aside (see backward()).
  std::vector<Grad*> stash_;  // by parameter index; nullptr for others
  // The KV cache: per layer [capacity, Hkv*D] keys and values (backend memory).
  std::vector<Act*> k_cache_, v_cache_;
  int64_t decode_capacity_ = 0, decode_pos_ = 0;
};

template <typename T>
using Transformer = BasicTransformer<backend::Cpu<T>>;

}  // namespace kumiko::model
