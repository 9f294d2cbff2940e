#pragma once
// The model weights file: logical tensors by name in HDF5 (ARCHITECTURE.md rule 3),
// readable by any second implementation (scripts/reference reads it with h5py).
//
//   /                  attributes: format = "kumiko-weights", format_version = 1,
//                      step, tokenizer_sha256, tokenizer_path
//   /config            the effective INI text
//   /model/<name>      float32, logical shape, chunked with Fletcher-32 checksums
#include <cstdint>
#include <string>
#include <vector>

#include "kumiko/model/parameters.h"

namespace kumiko::train {

struct WeightsInfo {
  std::string config_ini;
  std::string tokenizer_sha256;
  std::string tokenizer_path;
  int64_t step = 0;
};

// General form: one logical tensor (full shape) per spec.
void write_weights(const std::string& path, const std::vector<model::ParameterSpec>& specs,
                   const std::vector<const float*>& logical, const WeightsInfo& info);
WeightsInfo read_weights(const std::string& path, const std::vector<model::ParameterSpec>& specs,
                         const std::vector<float*>& logical);
// An unsharded store (one process, or tp = 1).
void write_weights(const std::string& path, const model::ParameterStore<float>& params,
                   const WeightsInfo& info);
// Reads every parameter of `params` from the file; a missing tensor, a shape
// mismatch or an unexpected extra tensor is a UserError naming file and tensor.
WeightsInfo read_weights(const std::string& path, model::ParameterStore<float>& params);
// Only the metadata (config text, tokenizer, step).
WeightsInfo read_weights_info(const std::string& path);

}  // namespace kumiko::train
