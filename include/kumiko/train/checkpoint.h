#pragma once
// Training checkpoints (docs/checkpoint-format.md): logical tensors of the model
// and of AdamW's moments, the training state and the effective configuration, in
// one HDF5 file committed atomically through ckpt::Store.
#include <cstdint>
#include <string>
#include <vector>

#include "kumiko/config/config.h"
#include "kumiko/model/parameters.h"
#include "kumiko/train/optimizer.h"

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

// Loads a checkpoint into params and the flat moments m, v after checking that its model
// configuration and tokenizer match `config` / `tokenizer_sha256` (a UserError
// lists every differing key: "model.d_model: checkpoint 128, config 256").
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

}  // namespace kumiko::train
