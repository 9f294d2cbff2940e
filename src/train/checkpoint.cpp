#include "kumiko/train/checkpoint.h"

#include <sys/mman.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <map>
#include <set>
#include <sstream>
#include <thread>

#include "kumiko/ckpt/h5file.h"
#include "kumiko/comm/communicator.h"
#include "kumiko/core/error.h"
#include "kumiko/core/progress.h"

namespace kumiko::train {
namespace {

constexpr const char* kFormat = "kumiko-checkpoint";
constexpr int64_t kFormatVersion = 1;

// section.key -> value for one INI text (comments and blank lines ignored).
std::map<std::string, std::string> ini_values(const std::string& text) {
  std::map<std::string, std::string> out;
  std::istringstream in(text);
  std::string line, section;
  auto trim = [](std::string s) {
    const auto b = s.find_first_not_of(" \t\r");
    const auto e = s.find_last_not_of(" \t\r");
    return b == std::string::npos ? std::string() : s.substr(b, e - b + 1);
  };
  while (std::getline(in, line)) {
    line = trim(line);
    if (line.empty() || line[0] == '#' || line[0] == ';') continue;
    if (line.front() == '[' && line.back() == ']') {
      section = trim(line.substr(1, line.size() - 2));
      continue;
    }
    const auto eq = line.find('=');
    if (eq == std::string::npos) continue;
    std::string value = trim(line.substr(eq + 1));
    if (value.size() >= 2 && value.front() == '"' && value.back() == '"') value = value.substr(1, value.size() - 2);
    out[section + "." + trim(line.substr(0, eq))] = value;
  }
  return out;
}

// A file with at least this many tensor bytes shows progress while it is written or
// read (core/progress.h); small checkpoints (tests, tiny models) print nothing extra.
constexpr int64_t kProgressMinBytes = int64_t{64} << 20;

// Bytes of the values and the two moments of every tensor.
int64_t tensor_bytes(const std::vector<model::ParameterSpec>& specs) {
  int64_t bytes = 0;
  for (const auto& spec : specs) bytes += 3 * numel_of(spec.shape) * int64_t{sizeof(float)};
  return bytes;
}

// "checkpoint: saving step_00001000.h5", counting the tensor bytes on the ckpt logger.
Progress tensor_progress(const char* verb, const std::string& path,
                         const std::vector<model::ParameterSpec>& specs) {
  const int64_t bytes = tensor_bytes(specs);
  ProgressOptions options;
  options.subsystem = "ckpt";
  if (bytes < kProgressMinBytes) options.mode = ProgressMode::off;
  const std::string file = std::filesystem::path(path).filename().string();
  return Progress(std::string("checkpoint: ") + verb + " " + file, bytes, "B", options);
}

void write_scalar(ckpt::H5Writer& w, const std::string& name, int64_t v) { w.write_i64(name, {1}, &v); }
int64_t read_scalar(const ckpt::H5Reader& r, const std::string& name) {
  int64_t v = 0;
  r.read_i64(name, {1}, &v);
  return v;
}

void write_scalars(ckpt::H5Writer& w, const TrainState& state) {
  write_scalar(w, "/state/step", state.step);
  write_scalar(w, "/state/tokens_seen", state.tokens_seen);
  write_scalar(w, "/state/optimizer_steps", state.optimizer_steps);
  write_scalar(w, "/state/loader_step", state.loader_step);
  write_scalar(w, "/state/seed", static_cast<int64_t>(state.seed));
  write_scalar(w, "/state/skipped_steps", state.skipped_steps);
}

void write_header(ckpt::H5Writer& w, const TrainState& state, const CheckpointMeta& meta) {
  w.set_attr("format", kFormat);
  w.set_attr("format_version", kFormatVersion);
  w.set_attr("step", state.step);
  w.set_attr("tokenizer_sha256", meta.tokenizer_sha256);
  w.set_attr("tokenizer_path", meta.tokenizer_path);
  w.write_string("/config", meta.config_ini);
}

}  // namespace

namespace {
// The keys selected by `take` on which the two INI texts differ, as
// "key: checkpoint X, config Y; ...".
template <typename Take>
std::string config_diff(const std::string& checkpoint_ini, const std::string& config_ini, Take take) {
  const auto a = ini_values(checkpoint_ini), b = ini_values(config_ini);
  std::set<std::string> keys;
  for (const auto& [k, v] : a)
    if (take(k)) keys.insert(k);
  for (const auto& [k, v] : b)
    if (take(k)) keys.insert(k);
  std::string diff;
  for (const auto& k : keys) {
    const auto ia = a.find(k), ib = b.find(k);
    const std::string va = ia == a.end() ? "(absent)" : ia->second;
    const std::string vb = ib == b.end() ? "(absent)" : ib->second;
    if (va == vb) continue;
    // Numbers written differently ("1e-05" vs "0.00001") are the same value.
    try {
      size_t pa = 0, pb = 0;
      if (std::stod(va, &pa) == std::stod(vb, &pb) && pa == va.size() && pb == vb.size()) continue;
    } catch (const std::exception&) {
    }
    if (!diff.empty()) diff += "; ";
    diff += k + ": checkpoint " + va + ", config " + vb;
  }
  return diff;
}

bool starts_with(const std::string& s, const char* prefix) { return s.rfind(prefix, 0) == 0; }
}  // namespace

std::string model_config_diff(const std::string& checkpoint_ini, const std::string& config_ini) {
  return config_diff(checkpoint_ini, config_ini, [](const std::string& k) { return starts_with(k, "model."); });
}

std::string run_config_changes(const std::string& checkpoint_ini, const std::string& config_ini) {
  return config_diff(checkpoint_ini, config_ini, [](const std::string& k) {
    return !starts_with(k, "model.") && !starts_with(k, "log.") && !starts_with(k, "checkpoint.") &&
           k != "train.stop_at";
  });
}

namespace {
// Pointers to each tensor of an unsharded store inside a flat-layout buffer.
template <typename P>
std::vector<P> tensors_in(const model::ParameterStore<float>& params, P flat) {
  std::vector<P> out;
  const float* base = params.flat_values().data();
  for (size_t i = 0; i < params.size(); ++i) {
    const int idx = static_cast<int>(i);
    KUMIKO_CHECK(params.spec(idx).split == model::Split::none, "tensor ", params.spec(idx).name,
                 " is sharded: gather the logical tensors first (model/sharding.h)");
    out.push_back(flat + (params.value(idx) - base));
  }
  return out;
}
std::vector<model::ParameterSpec> specs_of(const model::ParameterStore<float>& params) {
  std::vector<model::ParameterSpec> specs;
  for (size_t i = 0; i < params.size(); ++i) specs.push_back(params.spec(static_cast<int>(i)));
  return specs;
}
}  // namespace

int64_t save_checkpoint(const std::string& path, const model::ParameterStore<float>& params,
                        const float* m, const float* v, const TrainState& state,
                        const CheckpointMeta& meta, int write_delay_ms) {
  LogicalState t{specs_of(params), tensors_in(params, params.flat_values().data()), tensors_in(params, m),
                 tensors_in(params, v)};
  return save_checkpoint(path, t, state, meta, write_delay_ms);
}

int64_t save_checkpoint(const std::string& path, const LogicalState& t, const TrainState& state,
                        const CheckpointMeta& meta, int write_delay_ms) {
  ckpt::H5Writer w(path);
  write_header(w, state, meta);
  Progress progress = tensor_progress("saving", path, t.specs);
  for (size_t i = 0; i < t.specs.size(); ++i) {
    const auto& spec = t.specs[i];
    const int64_t bytes = numel_of(spec.shape) * int64_t{sizeof(float)};
    w.write_f32("/model/" + spec.name, spec.shape, t.values[i]);
    progress.advance(bytes);
    w.write_f32("/optim/m/" + spec.name, spec.shape, t.m[i]);
    progress.advance(bytes);
    w.write_f32("/optim/v/" + spec.name, spec.shape, t.v[i]);
    progress.advance(bytes);
    if (write_delay_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(write_delay_ms));
  }
  write_scalars(w, state);
  w.commit();  // the summary's time includes the flush and fsync
  progress.finish();
  return static_cast<int64_t>(std::filesystem::file_size(path));
}

namespace {
// Every check of a checkpoint before any tensor is read (a caller may load into live
// buffers), and its training state.
TrainState read_header(const ckpt::H5Reader& r, const config::Config& config, const std::string& tokenizer_sha256,
                       const std::vector<model::ParameterSpec>& specs) {
  const std::string& path = r.path();
  KUMIKO_USER_CHECK(r.has_attr("format") && r.attr_string("format") == kFormat, path,
                    ": not a kumiko checkpoint (attribute format != '", kFormat, "')");
  const int64_t version = r.attr_int("format_version");
  KUMIKO_USER_CHECK(version == kFormatVersion, path, ": checkpoint format_version ", version,
                    " is not supported (expected ", kFormatVersion, ")");
  const std::string stored = r.read_string("/config");
  const std::string diff = model_config_diff(stored, config::to_ini(config));
  KUMIKO_USER_CHECK(diff.empty(), path, ": checkpoint does not match the configured model: ", diff);
  const std::string stored_sha = r.attr_string("tokenizer_sha256");
  KUMIKO_USER_CHECK(stored_sha == tokenizer_sha256, path, ": tokenizer differs: checkpoint ",
                    stored_sha.empty() ? "(none, synthetic data)" : stored_sha, ", data.dir ",
                    tokenizer_sha256.empty() ? "(none, synthetic data)" : tokenizer_sha256);
  for (const auto& spec : specs)
    for (const char* group : {"/model/", "/optim/m/", "/optim/v/"})
      KUMIKO_USER_CHECK(r.has(group + spec.name), path, ": missing tensor '", group + spec.name, "'");
  TrainState s;
  s.step = read_scalar(r, "/state/step");
  s.tokens_seen = read_scalar(r, "/state/tokens_seen");
  s.optimizer_steps = read_scalar(r, "/state/optimizer_steps");
  s.loader_step = read_scalar(r, "/state/loader_step");
  s.seed = static_cast<uint64_t>(read_scalar(r, "/state/seed"));
  s.skipped_steps = read_scalar(r, "/state/skipped_steps");
  KUMIKO_USER_CHECK(s.seed == config.train.seed, path, ": train.seed: checkpoint ", s.seed, ", config ",
                    config.train.seed, " (the data order would change)");
  return s;
}

// A local tensor's contiguous runs (local offset, logical offset, count) in logical order.
struct Run {
  int64_t local, logical, count;
};
std::vector<Run> logical_runs(const model::ParameterSpec& local) {
  std::vector<Run> runs;
  local.for_each_run([&](int64_t l, int64_t g, int64_t c) { runs.push_back({l, g, c}); });
  std::sort(runs.begin(), runs.end(), [](const Run& a, const Run& b) { return a.logical < b.logical; });
  return runs;
}
// Whether the local layout already is the slabs' order (true for kumiko's splits).
bool local_in_slab_order(const std::vector<Run>& runs) {
  int64_t next = 0;
  for (const auto& run : runs) {
    if (run.local != next) return false;
    next += run.count;
  }
  return true;
}

}  // namespace

std::vector<ckpt::Slab> shard_slabs(const model::ParameterSpec& local) {
  std::vector<std::pair<int64_t, int64_t>> runs;
  for (const auto& run : logical_runs(local)) runs.emplace_back(run.logical, run.count);
  return ckpt::slabs_of_runs(local.shape, runs);
}

bool is_slab_order(const model::ParameterSpec& local) { return local_in_slab_order(logical_runs(local)); }

const float* in_slab_order(const model::ParameterSpec& local, const float* data, float* scratch) {
  const auto runs = logical_runs(local);
  if (local_in_slab_order(runs)) return data;
  int64_t pos = 0;
  for (const auto& run : runs) {
    std::copy_n(data + run.local, run.count, scratch + pos);
    pos += run.count;
  }
  return scratch;
}

void ShardedState::reserve_snapshot() {
  if (static_cast<int64_t>(snapshot.size()) == snapshot_elements) return;
  snapshot = {};
  snapshot.reserve(static_cast<size_t>(snapshot_elements));
  // Huge pages for the aligned inside of the block (THP in "madvise" mode, Debian's
  // default): 512x fewer page faults on the first touch.
  constexpr uintptr_t kHuge = uintptr_t{2} << 20;
  const auto begin = (reinterpret_cast<uintptr_t>(snapshot.data()) + kHuge - 1) & ~(kHuge - 1);
  const auto end = (reinterpret_cast<uintptr_t>(snapshot.data() + snapshot_elements)) & ~(kHuge - 1);
  if (end > begin) ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
  snapshot.resize(static_cast<size_t>(snapshot_elements));  // zero-filled: touched
}

int64_t save_checkpoint(const std::string& path, comm::Communicator& group, const ShardedState& st,
                        const TrainState& state, const CheckpointMeta& meta, int write_delay_ms) {
  KUMIKO_CHECK(st.parts.size() == st.specs.size(), "save_checkpoint: one part per tensor expected");
  ckpt::H5Writer w(path, group);
  write_header(w, state, meta);
  // Progress through the file as this rank goes (all ranks go through it together).
  Progress progress = tensor_progress("saving", path, group.rank() == 0 ? st.specs : std::vector<model::ParameterSpec>{});
  for (size_t i = 0; i < st.specs.size(); ++i) {
    const auto& spec = st.specs[i];
    const auto& part = st.parts[i];
    const int64_t bytes = numel_of(spec.shape) * int64_t{sizeof(float)};
    w.write_f32_slabs("/model/" + spec.name, spec.shape, part.slabs, part.value);
    w.write_f32_slabs("/optim/m/" + spec.name, spec.shape, part.slabs, part.m);
    w.write_f32_slabs("/optim/v/" + spec.name, spec.shape, part.slabs, part.v);
    progress.advance(3 * bytes);
    if (write_delay_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(write_delay_ms));
  }
  write_scalars(w, state);
  w.commit();
  progress.finish();
  return group.rank() == 0 ? static_cast<int64_t>(std::filesystem::file_size(path)) : 0;
}

BackgroundWrite::~BackgroundWrite() {
  if (!running()) return;
  thread_.join();
  if (!error_) return;
  try {
    std::rethrow_exception(error_);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "kumiko: background checkpoint write failed: %s\n", e.what());
  }
}

void BackgroundWrite::start(std::function<void()> job) {
  KUMIKO_CHECK(!running(), "BackgroundWrite::start: the previous write was not waited for");
  done_ = false;
  error_ = nullptr;
  thread_ = std::thread([this, job = std::move(job)] {
    try {
      job();
    } catch (...) {
      error_ = std::current_exception();
    }
    done_ = true;
  });
}

void BackgroundWrite::wait() {
  if (!running()) return;
  thread_.join();
  if (error_) {
    auto e = error_;
    error_ = nullptr;
    std::rethrow_exception(e);
  }
}

TrainState load_checkpoint(const std::string& path, const config::Config& config,
                           const std::string& tokenizer_sha256,
                           model::ParameterStore<float>& params, float* m, float* v) {
  ckpt::H5Reader r(path);
  TrainState s = read_header(r, config, tokenizer_sha256, specs_of(params));
  Progress progress = tensor_progress("loading", path, specs_of(params));
  const float* base = params.flat_values().data();
  std::vector<float> staging;
  for (size_t i = 0; i < params.size(); ++i) {
    const int idx = static_cast<int>(i);
    const auto& spec = params.spec(idx);  // this rank's shard of the logical tensor
    const auto runs = logical_runs(spec);
    const auto slabs = shard_slabs(spec);
    const int64_t offset = params.value(idx) - base;
    for (auto [group, flat] : {std::pair<const char*, float*>{"/model/", params.flat_values().data()},
                               {"/optim/m/", m}, {"/optim/v/", v}}) {
      float* dst = flat + offset;
      if (local_in_slab_order(runs)) {
        r.read_f32_slabs(group + spec.name, spec.shape, slabs, dst);
        continue;
      }
      staging.resize(static_cast<size_t>(params.numel(idx)));
      r.read_f32_slabs(group + spec.name, spec.shape, slabs, staging.data());
      int64_t pos = 0;
      for (const auto& run : runs) {
        std::copy_n(staging.data() + pos, run.count, dst + run.local);
        pos += run.count;
      }
    }
    progress.advance(3 * params.numel(idx) * int64_t{sizeof(float)});
  }
  progress.finish();
  return s;
}

TrainState load_checkpoint(const std::string& path, const config::Config& config,
                           const std::string& tokenizer_sha256, const std::vector<model::ParameterSpec>& specs,
                           const std::vector<float*>& values, const std::vector<float*>& m,
                           const std::vector<float*>& v) {
  ckpt::H5Reader r(path);
  TrainState s = read_header(r, config, tokenizer_sha256, specs);
  Progress progress = tensor_progress("loading", path, specs);
  for (size_t i = 0; i < specs.size(); ++i) {
    const auto& spec = specs[i];
    const int64_t bytes = numel_of(spec.shape) * int64_t{sizeof(float)};
    r.read_f32("/model/" + spec.name, spec.shape, values[i]);
    progress.advance(bytes);
    r.read_f32("/optim/m/" + spec.name, spec.shape, m[i]);
    progress.advance(bytes);
    r.read_f32("/optim/v/" + spec.name, spec.shape, v[i]);
    progress.advance(bytes);
  }
  progress.finish();
  return s;
}

}  // namespace kumiko::train
