#pragma once
// The one table of configuration keys: for_each_field(config, f) calls
//   f(key, field, help, choices)
// for every key in order, where `field` is a reference into the Config (const or not)
// and `choices` is "a|b|c" for keys with a fixed set of values, nullptr otherwise.
// add_options, to_ini and all_keys are all driven by this table, so a key added here
// is at once an option, an INI key and a dumped value (and must be added to
// docs/config.md, which a test checks).
#include <type_traits>

#include "kumiko/config/config.h"

namespace kumiko::config::detail {

inline constexpr const char* kSections[] = {"model",   "data",       "train", "parallel",
                                            "backend", "checkpoint", "log"};

template <typename C, typename F>
requires std::is_same_v<std::remove_const_t<C>, Config>
void for_each_field(C& c, F&& f) {
  auto& m = c.model;
  f("model.arch", m.arch, "model family", "gpt2|llama");
  f("model.n_layers", m.n_layers, "transformer blocks", nullptr);
  f("model.n_heads", m.n_heads, "attention (query) heads", nullptr);
  f("model.n_kv_heads", m.n_kv_heads, "key/value heads (0 = n_heads)", nullptr);
  f("model.d_model", m.d_model, "embedding width", nullptr);
  f("model.d_ff", m.d_ff, "MLP hidden width (0 = 4*d_model)", nullptr);
  f("model.vocab_size", m.vocab_size, "vocabulary size", nullptr);
  f("model.max_seq_len", m.max_seq_len, "longest sequence (gpt2 position table)", nullptr);
  f("model.tie_embeddings", m.tie_embeddings, "share token embedding and output head", nullptr);
  f("model.norm_eps", m.norm_eps, "layernorm/rmsnorm epsilon", nullptr);
  f("model.rope_theta", m.rope_theta, "RoPE base (llama)", nullptr);
  f("model.init_std", m.init_std, "std of the normal weight init", nullptr);

  auto& d = c.data;
  f("data.dir", d.dir, "folder with token shards (from kumiko prepare)", nullptr);
  f("data.seq_len", d.seq_len, "tokens per training sequence", nullptr);
  f("data.synthetic", d.synthetic, "random tokens instead of data.dir (benchmarks)", nullptr);

  auto& t = c.train;
  f("train.steps", t.steps, "optimizer steps", nullptr);
  f("train.global_batch", t.global_batch, "sequences per step, all ranks", nullptr);
  f("train.micro_batch", t.micro_batch, "sequences per forward/backward per dp rank", nullptr);
  f("train.recompute", t.recompute,
    "activation recomputation: none, selective (norm outputs and MLP activation), full (each layer from its input)",
    "none|selective|full");
  f("train.lr", t.lr, "peak learning rate", nullptr);
  f("train.min_lr", t.min_lr, "final learning rate of the decay", nullptr);
  f("train.warmup_steps", t.warmup_steps, "linear warmup steps", nullptr);
  f("train.decay", t.decay, "learning-rate decay after warmup", "cosine|linear|constant");
  f("train.weight_decay", t.weight_decay, "AdamW weight decay (matrices only)", nullptr);
  f("train.grad_clip", t.grad_clip, "global gradient-norm clip (0 = off)", nullptr);
  f("train.beta1", t.beta1, "AdamW beta1", nullptr);
  f("train.beta2", t.beta2, "AdamW beta2", nullptr);
  f("train.eps", t.eps, "AdamW epsilon", nullptr);
  f("train.seed", t.seed, "seed of weights init and data order", nullptr);
  f("train.init_from", t.init_from, "start from this weights file (empty = initialize from the seed)", nullptr);
  f("train.eval_every", t.eval_every, "steps between evaluations (0 = never)", nullptr);
  f("train.eval_batches", t.eval_batches, "global batches per evaluation (val windows 0 .. eval_batches x global_batch - 1)",
    nullptr);
  f("train.stop_at", t.stop_at, "stop after this step (0 = run to steps)", nullptr);
  f("train.max_skipped_steps", t.max_skipped_steps, "non-finite steps in a row before exit 76", nullptr);
  f("train.inject_nan_step", t.inject_nan_step, "testing only: poison this step's gradient", nullptr);
  f("train.inject_nan_count", t.inject_nan_count, "testing only: poisoned steps in a row", nullptr);
  f("train.inject_nan_rank", t.inject_nan_rank, "testing only: the rank whose gradient is poisoned",
    nullptr);
  f("train.spike_action", t.spike_action, "what a loss spike does", "off|warn|skip|rollback");
  f("train.spike_factor", t.spike_factor, "spike: loss above this x the running median (0 = off)", nullptr);
  f("train.spike_window", t.spike_window, "spike: steps in the running median", nullptr);
  f("train.spike_grad_norm", t.spike_grad_norm, "spike: gradient norm above this (0 = off)", nullptr);
  f("train.spike_max_rollbacks", t.spike_max_rollbacks, "spike: rollbacks before a spike ends the run (exit 76)",
    nullptr);
  f("train.inject_spike_step", t.inject_spike_step, "testing only: poison the batch of this step", nullptr);
  f("train.inject_spike_scale", t.inject_spike_scale, "testing only: the poisoned batch's loss factor", nullptr);

  auto& p = c.parallel;
  f("parallel.dp", p.dp, "data-parallel ranks", nullptr);
  f("parallel.tp", p.tp, "tensor-parallel ranks", nullptr);
  f("parallel.pp", p.pp, "pipeline stages", nullptr);
  f("parallel.zero", p.zero, "ZeRO stage: 0 or 1 (shard optimizer state over dp)", "0|1");
  f("parallel.bucket_mb", p.bucket_mb, "gradient bucket size (MB) reduced while backward runs", nullptr);
  f("parallel.sequence_parallel", p.sequence_parallel, "tp: shard norms and residuals along the sequence",
    nullptr);
  f("parallel.pp_schedule", p.pp_schedule, "pipeline schedule", "gpipe|1f1b|interleaved");
  f("parallel.pp_chunks", p.pp_chunks, "model chunks per pipeline rank (interleaved: >= 2)", nullptr);
  f("parallel.pp_layers", p.pp_layers, "layers per virtual stage, e.g. 3,3,2,2 (empty = even)", nullptr);
  f("parallel.comm_timeout_s", p.comm_timeout_s, "watchdog: seconds before a stalled collective ends the job",
    nullptr);

  auto& b = c.backend;
  f("backend.device", b.device, "where the ops run", "cpu|cuda");
  f("backend.dtype", b.dtype, "compute dtype (master weights stay fp32)", "fp32|bf16");
  f("backend.threads", b.threads, "CPU threads per rank (0 = OMP_NUM_THREADS, else the rank's share of the cores it may run on)", nullptr);
  f("backend.peak_gflops", b.peak_gflops, "measured GEMM peak per process, for MFU (0 = off)",
    nullptr);
  f("backend.matmul", b.matmul, "matmul implementation", "kumiko|cublas");
  f("backend.attention", b.attention, "attention implementation", "kumiko|cudnn");
  f("backend.bf16_gemm", b.bf16_gemm, "bf16 GEMM on the CPU (auto: oneDNN / sbgemm where the CPU has bf16 instructions, else emulated)",
    "auto|emulated|openblas|onednn");
  f("backend.packed_weights", b.packed_weights,
    "bf16 GEMM onednn: keep the linear weights in oneDNN's packed layout between steps (4 bytes a parameter more)",
    nullptr);
  f("backend.comm", b.comm, "GPU collectives: NCCL, or MPI over pinned host buffers (ranks may share a GPU)", "auto|nccl|mpi");

  auto& k = c.checkpoint;
  f("checkpoint.dir", k.dir, "checkpoint folder (empty = <log.run_dir>/checkpoints)", nullptr);
  f("checkpoint.every_steps", k.every_steps, "steps between checkpoints (0 = end only)", nullptr);
  f("checkpoint.keep_last", k.keep_last, "checkpoints kept (0 = all)", nullptr);
  f("checkpoint.resume", k.resume, "empty, auto (latest in dir) or a checkpoint path", nullptr);
  f("checkpoint.write_delay_ms", k.write_delay_ms, "testing only: pause after each tensor saved",
    nullptr);
  f("checkpoint.async", k.async, "write checkpoints in the background from a snapshot (training goes on)",
    nullptr);
  f("checkpoint.writer", k.writer,
    "who writes: every rank its own shards through parallel HDF5, or rank 0 after gathering (auto: parallel "
    "when built with it and run on several ranks)",
    "auto|parallel|gather");

  auto& l = c.log;
  f("log.run_dir", l.run_dir, "run folder (metrics.jsonl, checkpoints)", nullptr);
  f("log.every_steps", l.every_steps, "steps between log lines", nullptr);
  f("log.sample_every", l.sample_every, "steps between text samples (0 = never)", nullptr);
  f("log.level", l.level, "log level", "trace|debug|info|warn|error|off");
  f("log.all_ranks", l.all_ranks, "every rank logs at log.level, not only rank 0", nullptr);
  f("log.tensorboard", l.tensorboard, "write TensorBoard event files in <run_dir>/tensorboard", nullptr);
  f("log.save_init_weights", l.save_init_weights, "write <run_dir>/weights_init.h5 (the initial weights) before step 1",
    nullptr);
  f("log.straggler_every", l.straggler_every, "steps between straggler checks (0 = never)", nullptr);
  f("log.straggler_threshold", l.straggler_threshold, "name a rank this much slower than the median (0.2 = 20%)",
    nullptr);
}

}  // namespace kumiko::config::detail
