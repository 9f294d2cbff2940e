#pragma once
// Training checkpoints (docs/checkpoint-format.md): logical tensors of the model
// and of AdamW's moments, the training state and the effective configuration, in
// one HDF5 file committed atomically through ckpt::Store.
#include <atomic>
#include <cstdint>
#include <exception>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "kumiko/ckpt/h5file.h"
#include "kumiko/config/config.h"
#include "kumiko/model/parameters.h"
#include "kumiko/train/optimizer.h"

namespace kumiko::comm {
class Communicator;
}

namespace kumiko::train {

struct TrainState {
  int64_t step = 0;             // optimizer steps completed
  int64_t tokens_seen = 0;      // training tokens consumed
  int64_t optimizer_steps = 0;  // AdamW's bias-correction counter
  int64_t loader_step = 0;      // the data loader's position: next step to draw
  uint64_t seed = 0;            // seed of init, data order and synthetic tokens
  int64_t skipped_steps = 0;    // steps skipped for non-finite gradients
};

struct CheckpointMeta {
  std::string config_ini;  // effective INI text
  std::string tokenizer_sha256;
  std::string tokenizer_path;
};

// Writes and commits a checkpoint (temp file, fsync, rename). Returns bytes written.
// One logical tensor (full shape) per spec for the values and the two moments.
struct LogicalState {
  std::vector<model::ParameterSpec> specs;
  std::vector<const float*> values, m, v;
};
int64_t save_checkpoint(const std::string& path, const LogicalState& tensors, const TrainState& state,
                        const CheckpointMeta& meta, int write_delay_ms = 0);
// An unsharded store: m and v are AdamW's moments in the flat layout of `params`.
int64_t save_checkpoint(const std::string& path, const model::ParameterStore<float>& params,
                        const float* m, const float* v, const TrainState& state,
                        const CheckpointMeta& meta, int write_delay_ms = 0);

// ---- sharded checkpoints: every rank writes and reads its own shards ----------------

// The slabs a rank's tensor (a tensor-parallel shard, or a whole tensor) occupies in its
// logical tensor, and its elements in their order (the logical tensor's row-major order).
std::vector<ckpt::Slab> shard_slabs(const model::ParameterSpec& local);
// Whether a local tensor's layout already is its slabs' order (kumiko's splits are).
bool is_slab_order(const model::ParameterSpec& local);
// `data` (a local tensor) in the slabs' order: `data` itself when its layout already is,
// else a copy in `scratch` (the local tensor's size).
const float* in_slab_order(const model::ParameterSpec& local, const float* data, float* scratch);

// This rank's part of a checkpoint: per logical tensor (all of them, in the file's
// order) the slabs it writes with their values and moments; no slabs where another
// rank writes that tensor. The parts of all ranks cover every tensor exactly once.
struct ShardedState {
  struct Part {
    std::vector<ckpt::Slab> slabs;  // empty: another rank writes this tensor
    int local = -1;                 // the tensor's index in this rank's store
    int64_t offset = 0;             // its value, m and v in `snapshot`, one after another
    // The slabs' elements: in the live buffers (a foreground write) or in `snapshot`.
    const float *value = nullptr, *m = nullptr, *v = nullptr;
  };
  std::vector<model::ParameterSpec> specs;  // logical
  std::vector<Part> parts;                  // one per spec
  int64_t snapshot_elements = 0;            // 3 x the elements this rank writes
  std::vector<float> snapshot;              // a background write's copy, kept from save to save
  // Allocates and touches `snapshot` (transparent huge pages where the kernel offers
  // them): the first save then copies at memory speed instead of faulting pages in.
  void reserve_snapshot();
};
// Writes and commits one checkpoint file with every member of `group` writing its
// parts through parallel HDF5 (collective). Returns the file's bytes.
int64_t save_checkpoint(const std::string& path, comm::Communicator& group, const ShardedState& state,
                        const TrainState& train, const CheckpointMeta& meta, int write_delay_ms = 0);

// One checkpoint write at a time on a background thread (checkpoint.async): training
// goes on from a snapshot while the file is written.
class BackgroundWrite {
 public:
  BackgroundWrite() = default;
  ~BackgroundWrite();  // waits; an error is reported on stderr, not thrown
  BackgroundWrite(const BackgroundWrite&) = delete;
  BackgroundWrite& operator=(const BackgroundWrite&) = delete;
  // Runs `job` on a new thread; a job started earlier must have been waited for.
  void start(std::function<void()> job);
  bool running() const { return thread_.joinable(); }
  bool done() const { return running() && done_.load(); }  // finished, not yet waited for
  // Waits for the job; rethrows its exception. No-op when none is running.
  void wait();

 private:
  std::thread thread_;
  std::atomic<bool> done_{false};
  std::exception_ptr error_;
};

// Loads a checkpoint into params and the flat moments m, v after checking that its model
// configuration and tokenizer match `config` / `tokenizer_sha256` (a UserError
// lists every differing key: "model.d_model: checkpoint 128, config 256"). The store
// may hold tensor-parallel shards: each tensor reads only the slabs of its own shard.
TrainState load_checkpoint(const std::string& path, const config::Config& config,
                           const std::string& tokenizer_sha256,
                           model::ParameterStore<float>& params, float* m, float* v);
// General form: fills one logical tensor per spec for values, m and v.
TrainState load_checkpoint(const std::string& path, const config::Config& config,
                           const std::string& tokenizer_sha256, const std::vector<model::ParameterSpec>& specs,
                           const std::vector<float*>& values, const std::vector<float*>& m,
                           const std::vector<float*>& v);

// The [model] keys on which `a` and `b` differ, as "key: checkpoint X, config Y; ...".
std::string model_config_diff(const std::string& checkpoint_ini, const std::string& config_ini);
// The other keys that changed since the checkpoint's run (all but [model], which must
// match, [log], [checkpoint] and train.stop_at), in the same form: what a resume logs,
// since a run continues bitwise only where they match (backend.dtype, the parallel
// layout, backend.threads, train.lr, ...).
std::string run_config_changes(const std::string& checkpoint_ini, const std::string& config_ini);

}  // namespace kumiko::train
