#include "kumiko/train/weights.h"

#include <set>

#include "kumiko/ckpt/h5file.h"
#include "kumiko/core/error.h"

namespace kumiko::train {

namespace {
constexpr const char* kFormat = "kumiko-weights";
constexpr int64_t kFormatVersion = 1;
}  // namespace

void write_weights(const std::string& path, const std::vector<model::ParameterSpec>& specs,
                   const std::vector<const float*>& logical, const WeightsInfo& info) {
  ckpt::H5Writer w(path);
  w.set_attr("format", kFormat);
  w.set_attr("format_version", kFormatVersion);
  w.set_attr("step", info.step);
  w.set_attr("tokenizer_sha256", info.tokenizer_sha256);
  w.set_attr("tokenizer_path", info.tokenizer_path);
  w.write_string("/config", info.config_ini);
  for (size_t i = 0; i < specs.size(); ++i) w.write_f32("/model/" + specs[i].name, specs[i].shape, logical[i]);
  w.commit();
}

namespace {
std::vector<model::ParameterSpec> unsharded_specs(const model::ParameterStore<float>& params) {
  std::vector<model::ParameterSpec> specs;
  for (size_t i = 0; i < params.size(); ++i) {
    specs.push_back(params.spec(static_cast<int>(i)));
    KUMIKO_CHECK(specs.back().split == model::Split::none, "tensor ", specs.back().name,
                 " is sharded: gather the logical tensors first (model/sharding.h)");
  }
  return specs;
}
}  // namespace

void write_weights(const std::string& path, const model::ParameterStore<float>& params,
                   const WeightsInfo& info) {
  std::vector<const float*> data;
  for (size_t i = 0; i < params.size(); ++i) data.push_back(params.value(static_cast<int>(i)));
  write_weights(path, unsharded_specs(params), data, info);
}

namespace {
WeightsInfo read_info(const ckpt::H5Reader& r) {
  // A training checkpoint holds the same /model and /config, so it serves as weights too.
  const std::string format = r.has_attr("format") ? r.attr_string("format") : "";
  KUMIKO_USER_CHECK(format == kFormat || format == "kumiko-checkpoint", r.path(),
                    ": not a kumiko weights or checkpoint file (attribute format = '", format, "')");
  const int64_t version = r.attr_int("format_version");
  KUMIKO_USER_CHECK(version == kFormatVersion, r.path(), ": format_version ", version,
                    " is not supported (expected ", kFormatVersion, ")");
  WeightsInfo info;
  info.step = r.attr_int("step");
  info.tokenizer_sha256 = r.attr_string("tokenizer_sha256");
  info.tokenizer_path = r.attr_string("tokenizer_path");
  info.config_ini = r.read_string("/config");
  return info;
}
}  // namespace

WeightsInfo read_weights_info(const std::string& path) {
  ckpt::H5Reader r(path);
  return read_info(r);
}

WeightsInfo read_weights(const std::string& path, model::ParameterStore<float>& params) {
  std::vector<float*> data;
  for (size_t i = 0; i < params.size(); ++i) data.push_back(params.value(static_cast<int>(i)));
  return read_weights(path, unsharded_specs(params), data);
}

WeightsInfo read_weights(const std::string& path, const std::vector<model::ParameterSpec>& specs,
                         const std::vector<float*>& logical) {
  ckpt::H5Reader r(path);
  WeightsInfo info = read_info(r);
  std::set<std::string> expected;
  for (size_t i = 0; i < specs.size(); ++i) {
    const auto& spec = specs[i];
    expected.insert(spec.name);
    KUMIKO_USER_CHECK(r.has("/model/" + spec.name), path, ": missing tensor 'model/", spec.name,
                      "' (expected shape ", shape_str(spec.shape), ")");
    r.read_f32("/model/" + spec.name, spec.shape, logical[i]);
  }
  for (const auto& name : r.list("/model"))
    KUMIKO_USER_CHECK(expected.count(name), path, ": unexpected tensor 'model/", name,
                      "' (the configured model has no such parameter)");
  return info;
}

}  // namespace kumiko::train
