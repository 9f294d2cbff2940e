#pragma once
// Hugging Face model folders <-> kumiko weights files (docs/huggingface.md).
//
// A folder holds config.json and model.safetensors (or model.safetensors.index.json
// and its shards), as `save_pretrained` writes them. Two architectures map onto
// kumiko's models:
//   gpt2  (GPT2LMHeadModel): Conv1D weights are stored [in, out] and transposed to
//         kumiko's [out, in]; c_attn's columns are q | k | v, kumiko's qkv rows too.
//   llama (LlamaForCausalLM): q_proj, k_proj and v_proj are stacked into kumiko's
//         packed qkv rows [q | k | v]; both use rotate_half RoPE on the same head
//         layout, so no permutation is needed.
// Anything else (another model_type, an activation or RoPE scaling kumiko does not
// compute, a tensor that maps nowhere) is a UserError naming the file and key or
// tensor: an import never drops weights silently.
#include <cstdint>
#include <string>
#include <vector>

#include "kumiko/config/config.h"
#include "kumiko/model/parameters.h"
#include "kumiko/model/sharding.h"

namespace kumiko::train::hf {

// kumiko's [model] section for a Hugging Face config.json.
config::ModelConfig model_config(const std::string& config_json_path);

struct Imported {
  config::ModelConfig model;
  std::vector<model::ParameterSpec> specs;  // model::parameter_specs order
  model::LogicalTensors values;             // one logical tensor per spec
  std::vector<std::string> notes;           // what the import decided (tokenizer, ignored buffers)
};

// Reads a Hugging Face folder into kumiko's logical tensors.
Imported read_folder(const std::string& dir);

// kumiko import-hf: writes `out_h5` (a kumiko weights file whose /config holds the
// [model] section) and `out_h5` with ".ini" for ".h5" (that section, to start a
// config from); copies a SentencePiece tokenizer.model beside them when the folder has
// one. Returns the notes.
std::vector<std::string> import_folder(const std::string& dir, const std::string& out_h5);

// kumiko export-hf: from a weights file or checkpoint, writes config.json,
// generation_config.json, model.safetensors (shards above max_shard_bytes, with the
// index) and, when the file names a SentencePiece tokenizer that exists,
// tokenizer.model + tokenizer_config.json. Returns the files written.
std::vector<std::string> export_folder(const std::string& weights_path, const std::string& out_dir,
                                       uint64_t max_shard_bytes);

}  // namespace kumiko::train::hf
