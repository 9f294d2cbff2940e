#include "kumiko/train/hf.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <set>

#include <nlohmann/json.hpp>

#include "kumiko/ckpt/safetensors.h"
#include "kumiko/config/load.h"
#include "kumiko/core/error.h"
#include "kumiko/core/sha256.h"
#include "kumiko/model/transformer.h"
#include "kumiko/train/weights.h"

namespace kumiko::train::hf {

namespace {

namespace fs = std::filesystem;
namespace st = ckpt::safetensors;
using json = nlohmann::json;

json read_json(const std::string& path) {
  std::ifstream in(path);
  KUMIKO_USER_CHECK(in.good(), path, ": cannot open (a Hugging Face model folder has config.json)");
  try {
    return json::parse(in);
  } catch (const json::exception& e) {
    KUMIKO_USER_CHECK(false, path, ": not valid JSON (", e.what(), ")");
  }
  return {};
}

// A key of config.json: its value when present and not null, else `fallback`; a
// value of the wrong JSON type is a UserError naming the key.
template <typename T>
T value_or(const json& j, const char* key, T fallback, const std::string& path) {
  if (!j.contains(key) || j[key].is_null()) return fallback;
  try {
    return j[key].get<T>();
  } catch (const json::exception&) {
    KUMIKO_USER_CHECK(false, path, ": key '", key, "' has the wrong type (", j[key].dump(), ")");
  }
  return fallback;
}

template <typename T>
T required(const json& j, const char* key, const std::string& path) {
  KUMIKO_USER_CHECK(j.contains(key) && !j[key].is_null(), path, ": key '", key, "' is missing");
  return value_or<T>(j, key, T{}, path);
}

void require_value(bool ok, const std::string& path, const char* key, const json& j, const char* expected) {
  KUMIKO_USER_CHECK(ok, path, ": ", key, " = ", j.contains(key) ? j[key].dump() : std::string("(absent)"),
                    " is not supported by kumiko (expected ", expected, ")");
}

// "blocks.3.attn.qkv.weight" -> (3, "attn.qkv.weight"); (-1, name) for other tensors.
std::pair<int, std::string> split_block(const std::string& name) {
  static const std::regex block(R"(blocks\.(\d+)\.(.+))");
  std::smatch m;
  if (std::regex_match(name, m, block)) return {std::stoi(m[1]), m[2]};
  return {-1, name};
}

std::vector<float> transpose(const std::vector<float>& a, int64_t rows, int64_t cols) {  // [rows, cols] -> [cols, rows]
  std::vector<float> t(a.size());
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) t[c * rows + r] = a[r * cols + c];
  return t;
}

// The Hugging Face tensor(s) of one kumiko tensor. A GPT-2 Conv1D weight is stored
// [in, out] (`transposed`); a Llama qkv weight is three tensors stacked by rows.
struct Source {
  std::vector<std::string> names;
  bool transposed = false;
};

Source source_of(const model::Dims& d, const std::string& kumiko_name) {
  const auto [layer, rest] = split_block(kumiko_name);
  const std::string l = std::to_string(layer);
  if (!d.llama) {
    const std::string h = "transformer.h." + l + ".";
    static const std::map<std::string, std::pair<std::string, bool>> block = {
        {"norm1.weight", {"ln_1.weight", false}},         {"norm1.bias", {"ln_1.bias", false}},
        {"attn.qkv.weight", {"attn.c_attn.weight", true}}, {"attn.qkv.bias", {"attn.c_attn.bias", false}},
        {"attn.proj.weight", {"attn.c_proj.weight", true}}, {"attn.proj.bias", {"attn.c_proj.bias", false}},
        {"norm2.weight", {"ln_2.weight", false}},         {"norm2.bias", {"ln_2.bias", false}},
        {"mlp.fc.weight", {"mlp.c_fc.weight", true}},     {"mlp.fc.bias", {"mlp.c_fc.bias", false}},
        {"mlp.proj.weight", {"mlp.c_proj.weight", true}}, {"mlp.proj.bias", {"mlp.c_proj.bias", false}}};
    static const std::map<std::string, std::string> top = {{"embed.tokens.weight", "transformer.wte.weight"},
                                                           {"embed.positions.weight", "transformer.wpe.weight"},
                                                           {"final_norm.weight", "transformer.ln_f.weight"},
                                                           {"final_norm.bias", "transformer.ln_f.bias"},
                                                           {"head.weight", "lm_head.weight"}};
    if (layer >= 0) {
      const auto& [name, transposed] = block.at(rest);
      return {{h + name}, transposed};
    }
    return {{top.at(kumiko_name)}, false};
  }
  const std::string p = "model.layers." + l + ".";
  static const std::map<std::string, std::string> block = {{"norm1.weight", "input_layernorm.weight"},
                                                           {"attn.proj.weight", "self_attn.o_proj.weight"},
                                                           {"norm2.weight", "post_attention_layernorm.weight"},
                                                           {"mlp.gate.weight", "mlp.gate_proj.weight"},
                                                           {"mlp.up.weight", "mlp.up_proj.weight"},
                                                           {"mlp.down.weight", "mlp.down_proj.weight"}};
  static const std::map<std::string, std::string> top = {{"embed.tokens.weight", "model.embed_tokens.weight"},
                                                         {"final_norm.weight", "model.norm.weight"},
                                                         {"head.weight", "lm_head.weight"}};
  if (layer >= 0 && rest == "attn.qkv.weight")
    return {{p + "self_attn.q_proj.weight", p + "self_attn.k_proj.weight", p + "self_attn.v_proj.weight"}, false};
  if (layer >= 0) return {{p + block.at(rest)}, false};
  return {{top.at(kumiko_name)}, false};
}

// Rows of each stacked part of a Llama qkv weight.
std::vector<int64_t> qkv_rows(const model::Dims& d) { return {d.Hq * d.D, d.Hkv * d.D, d.Hkv * d.D}; }

// Tensors of a folder that map to nothing in kumiko but carry no weights: causal-mask
// and rotary buffers older transformers versions saved.
bool is_known_buffer(const std::string& name) {
  static const std::regex buffer(R"((transformer\.)?h\.\d+\.attn\.(masked_)?bias|model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq)");
  return std::regex_match(name, buffer);
}

// GPT-2 files saved from GPT2Model (the hub's "gpt2") have no "transformer." prefix.
std::string resolve(const st::Folder& folder, const std::string& name) {
  if (folder.has(name)) return name;
  const std::string bare = name.rfind("transformer.", 0) == 0 ? name.substr(12) : name;
  return folder.has(bare) ? bare : name;
}

std::string model_section(const config::ModelConfig& m) {
  config::Config c;
  c.model = m;
  const std::string ini = config::to_ini(c);
  const auto begin = ini.find("[model]");
  const auto end = ini.find("\n[", begin);
  return ini.substr(begin, end == std::string::npos ? std::string::npos : end + 1 - begin);
}

}  // namespace

config::ModelConfig model_config(const std::string& path) {
  const json j = read_json(path);
  const auto type = required<std::string>(j, "model_type", path);
  config::ModelConfig m;
  if (type == "gpt2") {
    m.arch = "gpt2";
    m.vocab_size = required<int>(j, "vocab_size", path);
    m.max_seq_len = required<int>(j, "n_positions", path);
    m.d_model = required<int>(j, "n_embd", path);
    m.n_layers = required<int>(j, "n_layer", path);
    m.n_heads = required<int>(j, "n_head", path);
    m.n_kv_heads = 0;
    m.d_ff = value_or<int>(j, "n_inner", 0, path);  // null: 4 * n_embd, as kumiko's 0
    m.norm_eps = value_or<double>(j, "layer_norm_epsilon", 1e-5, path);
    m.tie_embeddings = value_or<bool>(j, "tie_word_embeddings", true, path);
    const auto act = value_or<std::string>(j, "activation_function", "gelu_new", path);
    require_value(act == "gelu_new" || act == "gelu_pytorch_tanh" || act == "gelu_fast", path, "activation_function",
                  j, "the tanh GELU: gelu_new, gelu_pytorch_tanh or gelu_fast");
    require_value(value_or<bool>(j, "scale_attn_weights", true, path), path, "scale_attn_weights", j, "true");
    require_value(!value_or<bool>(j, "scale_attn_by_inverse_layer_idx", false, path), path,
                  "scale_attn_by_inverse_layer_idx", j, "false");
  } else if (type == "llama") {
    m.arch = "llama";
    m.vocab_size = required<int>(j, "vocab_size", path);
    m.d_model = required<int>(j, "hidden_size", path);
    m.d_ff = required<int>(j, "intermediate_size", path);
    m.n_layers = required<int>(j, "num_hidden_layers", path);
    m.n_heads = required<int>(j, "num_attention_heads", path);
    m.n_kv_heads = value_or<int>(j, "num_key_value_heads", m.n_heads, path);
    m.max_seq_len = value_or<int>(j, "max_position_embeddings", 2048, path);
    m.norm_eps = value_or<double>(j, "rms_norm_eps", 1e-6, path);  // transformers' LlamaConfig default
    m.rope_theta = value_or<double>(j, "rope_theta", 10000.0, path);
    m.tie_embeddings = value_or<bool>(j, "tie_word_embeddings", false, path);
    require_value(value_or<std::string>(j, "hidden_act", "silu", path) == "silu", path, "hidden_act", j, "silu");
    require_value(!value_or<bool>(j, "attention_bias", false, path), path, "attention_bias", j, "false");
    require_value(!value_or<bool>(j, "mlp_bias", false, path), path, "mlp_bias", j, "false");
    require_value(!j.contains("rope_scaling") || j["rope_scaling"].is_null(), path, "rope_scaling", j,
                  "null: kumiko computes plain RoPE");
    require_value(!j.contains("head_dim") || j["head_dim"].is_null() ||
                      value_or<int64_t>(j, "head_dim", 0, path) * m.n_heads == m.d_model,
                  path, "head_dim", j, "hidden_size / num_attention_heads");
  } else {
    KUMIKO_USER_CHECK(false, path, ": model_type '", type, "' cannot be imported (kumiko has gpt2 and llama)");
  }
  // kumiko's own checks of a [model] section (positive sizes, heads dividing the width,
  // kv heads dividing the heads), named by their config.json origin.
  config::Config c;
  c.model = m;
  c.data.seq_len = std::max(1, std::min(c.data.seq_len, m.max_seq_len));
  try {
    config::validate(c);
  } catch (const UserError& e) {
    KUMIKO_USER_CHECK(false, path, ": the model it describes is not valid for kumiko: ", e.what());
  }
  return m;
}

Imported read_folder(const std::string& dir) {
  Imported out;
  out.model = model_config((fs::path(dir) / "config.json").string());
  const model::Dims d = model::Dims::from(out.model);
  out.specs = model::parameter_specs(d);
  const st::Folder folder(dir);
  std::set<std::string> used;
  for (const auto& spec : out.specs) {
    Source src = source_of(d, spec.name);
    for (auto& n : src.names) n = resolve(folder, n);
    for (const auto& n : src.names)
      KUMIKO_USER_CHECK(folder.has(n), dir, ": tensor '", n, "' is missing (kumiko's ", spec.name, ")");
    std::vector<float> value;
    if (src.names.size() == 3) {  // llama q, k, v stacked by rows
      const auto rows = qkv_rows(d);
      for (size_t k = 0; k < 3; ++k) {
        const auto part = folder.read_f32(src.names[k], {rows[k], d.C});
        value.insert(value.end(), part.begin(), part.end());
      }
    } else if (src.transposed) {
      value = transpose(folder.read_f32(src.names[0], {spec.shape[1], spec.shape[0]}), spec.shape[1], spec.shape[0]);
    } else {
      value = folder.read_f32(src.names[0], spec.shape);
    }
    used.insert(src.names.begin(), src.names.end());
    out.values.push_back(std::move(value));
  }
  // Every tensor of the folder is used, a known buffer, or a tied head equal to the embedding.
  const std::string head = resolve(folder, "lm_head.weight");
  for (const auto& name : folder.names()) {
    if (used.count(name)) continue;
    if (is_known_buffer(name)) {
      out.notes.push_back("ignored the buffer " + name + " (no weights)");
      continue;
    }
    if (name == head && d.tied) {
      const auto h = folder.read_f32(name, {d.V, d.C});
      KUMIKO_USER_CHECK(h == out.values[0], dir, ": lm_head.weight differs from the token embedding, but config.json ",
                        "ties them (tie_word_embeddings)");
      out.notes.push_back("lm_head.weight equals the token embedding (tied)");
      continue;
    }
    KUMIKO_USER_CHECK(false, dir, ": tensor '", name, "' maps to no kumiko parameter of this ", out.model.arch,
                      " model");
  }
  return out;
}

std::vector<std::string> import_folder(const std::string& dir, const std::string& out_h5) {
  Imported in = read_folder(dir);
  const fs::path out(out_h5);
  if (out.has_parent_path()) fs::create_directories(out.parent_path());
  WeightsInfo info;
  config::Config c;  // a valid configuration around the imported [model]
  c.model = in.model;
  c.data.seq_len = std::min(c.data.seq_len, c.model.max_seq_len);
  info.config_ini = config::to_ini(c);
  const fs::path tokenizer = fs::path(dir) / "tokenizer.model";
  if (fs::exists(tokenizer)) {
    const fs::path copy = fs::path(out).replace_extension(".tokenizer.model");
    fs::copy_file(tokenizer, copy, fs::copy_options::overwrite_existing);
    info.tokenizer_path = copy.string();
    info.tokenizer_sha256 = sha256_file(copy.string());
    in.notes.push_back("SentencePiece tokenizer copied to " + copy.string() + ": prepare data with kumiko prepare " +
                       "--tokenizer " + copy.string());
  } else if (fs::exists(fs::path(dir) / "vocab.json") || fs::exists(fs::path(dir) / "tokenizer.json")) {
    in.notes.push_back("the folder's tokenizer is not a SentencePiece model (tokenizer.model): kumiko prepare cannot "
                       "use it (GPT-2's byte-level BPE is not supported), so data for this model must come from a "
                       "SentencePiece tokenizer with the same ids");
  }
  std::vector<const float*> ptrs;
  for (const auto& v : in.values) ptrs.push_back(v.data());
  write_weights(out_h5, in.specs, ptrs, info);  // a temporary file renamed when complete
  const fs::path ini = fs::path(out).replace_extension(".ini");
  std::ofstream(ini) << "# The model imported from " << dir << " into " << out_h5 << ".\n"
                     << "# Start a config from this section and train with --train.init_from=" << out_h5 << "\n"
                     << model_section(in.model);
  in.notes.push_back("wrote " + out_h5 + " and " + ini.string());
  return in.notes;
}

std::vector<std::string> export_folder(const std::string& weights_path, const std::string& out_dir,
                                       uint64_t max_shard_bytes) {
  const WeightsInfo info = read_weights_info(weights_path);
  const config::Config c = config::from_text(info.config_ini, weights_path);
  const config::ModelConfig& m = c.model;
  const model::Dims d = model::Dims::from(m);
  const auto specs = model::parameter_specs(d);
  model::LogicalTensors values;
  std::vector<float*> ptrs;
  for (const auto& s : specs) values.emplace_back(static_cast<size_t>(numel_of(s.shape)));
  for (auto& v : values) ptrs.push_back(v.data());
  read_weights(weights_path, specs, ptrs);

  // Hugging Face tensors: transposed or split copies where the layouts differ.
  std::vector<std::pair<std::string, std::vector<int64_t>>> names;
  std::vector<std::vector<float>> storage;
  for (size_t i = 0; i < specs.size(); ++i) {
    const Source src = source_of(d, specs[i].name);
    const auto& shape = specs[i].shape;
    if (src.names.size() == 3) {
      const auto rows = qkv_rows(d);
      int64_t row = 0;
      for (size_t k = 0; k < 3; ++k) {
        storage.emplace_back(values[i].begin() + row * d.C, values[i].begin() + (row + rows[k]) * d.C);
        names.push_back({src.names[k], {rows[k], d.C}});
        row += rows[k];
      }
    } else if (src.transposed) {
      storage.push_back(transpose(values[i], shape[0], shape[1]));
      names.push_back({src.names[0], {shape[1], shape[0]}});
    } else {
      storage.push_back(values[i]);
      names.push_back({src.names[0], shape});
    }
  }
  std::vector<st::OutTensor> tensors;
  for (size_t i = 0; i < names.size(); ++i) tensors.push_back({names[i].first, names[i].second, storage[i].data()});
  fs::create_directories(out_dir);
  auto files = st::write_folder(out_dir, tensors, max_shard_bytes);

  json config;
  if (!d.llama) {
    config = {{"architectures", {"GPT2LMHeadModel"}}, {"model_type", "gpt2"}, {"vocab_size", m.vocab_size},
              {"n_positions", m.max_seq_len}, {"n_ctx", m.max_seq_len}, {"n_embd", m.d_model},
              {"n_layer", m.n_layers}, {"n_head", m.n_heads}, {"n_inner", m.ff_dim()},
              {"activation_function", "gelu_new"}, {"layer_norm_epsilon", m.norm_eps},
              {"tie_word_embeddings", m.tie_embeddings}, {"resid_pdrop", 0.0}, {"embd_pdrop", 0.0},
              {"attn_pdrop", 0.0}, {"scale_attn_weights", true}, {"initializer_range", m.init_std}};
  } else {
    config = {{"architectures", {"LlamaForCausalLM"}}, {"model_type", "llama"}, {"vocab_size", m.vocab_size},
              {"hidden_size", m.d_model}, {"intermediate_size", m.ff_dim()}, {"num_hidden_layers", m.n_layers},
              {"num_attention_heads", m.n_heads}, {"num_key_value_heads", m.kv_heads()},
              {"max_position_embeddings", m.max_seq_len}, {"rms_norm_eps", m.norm_eps}, {"rope_theta", m.rope_theta},
              {"tie_word_embeddings", m.tie_embeddings}, {"hidden_act", "silu"}, {"attention_bias", false},
              {"rope_scaling", nullptr}, {"initializer_range", m.init_std}};
  }
  // kumiko's tokenizer ids: unk 0, bos 1, eos 2 (docs/data-format.md).
  config["bos_token_id"] = 1;
  config["eos_token_id"] = 2;
  config["torch_dtype"] = "float32";
  auto write_json = [&](const std::string& name, const json& j) {
    const std::string path = (fs::path(out_dir) / name).string();
    std::ofstream(path) << j.dump(2) << "\n";
    files.push_back(path);
  };
  write_json("config.json", config);
  write_json("generation_config.json", {{"bos_token_id", 1}, {"eos_token_id", 2}});
  if (!info.tokenizer_path.empty() && fs::exists(info.tokenizer_path)) {
    const std::string copy = (fs::path(out_dir) / "tokenizer.model").string();
    fs::copy_file(info.tokenizer_path, copy, fs::copy_options::overwrite_existing);
    files.push_back(copy);
    // A SentencePiece model with kumiko's settings: no BOS added, no dummy prefix.
    write_json("tokenizer_config.json", {{"tokenizer_class", "LlamaTokenizer"}, {"bos_token", "<s>"},
                                         {"eos_token", "</s>"}, {"unk_token", "<unk>"}, {"add_bos_token", false},
                                         {"add_eos_token", false}, {"legacy", false},
                                         {"model_max_length", m.max_seq_len}});
  }
  return files;
}

}  // namespace kumiko::train::hf
