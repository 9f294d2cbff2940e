#pragma once
// The fixed setup shared by the parity exporter and the parity test: a model
// from tests/golden/parity_<arch>.ini initialized with its seed, and one batch of
// random tokens (a pure function of the seed).
#include <string>
#include <vector>

#include "kumiko/config/load.h"
#include "kumiko/core/rng.h"
#include "kumiko/model/transformer.h"

namespace kumiko::parity {

struct Setup {
  config::Config cfg;
  model::Dims dims;
  int64_t B = 0, T = 0;
  std::vector<int32_t> inputs, targets;  // [B, T]
};

inline Setup make_setup(const std::string& ini) {
  Setup s;
  s.cfg = config::load_file(ini);
  s.dims = model::Dims::from(s.cfg.model);
  s.B = s.cfg.train.global_batch;
  s.T = s.cfg.data.seq_len;
  const uint64_t key = rng::stream_key(s.cfg.train.seed, "parity.batch");
  for (int64_t i = 0; i < s.B * s.T; ++i) {
    const auto block = rng::philox(key, 0, static_cast<uint64_t>(i));
    s.inputs.push_back(static_cast<int32_t>(block[0] % static_cast<uint32_t>(s.dims.V)));
    s.targets.push_back(static_cast<int32_t>(block[1] % static_cast<uint32_t>(s.dims.V)));
  }
  return s;
}

inline std::string golden_path(const std::string& arch, const std::string& ext) {
  return std::string(KUMIKO_SOURCE_DIR) + "/tests/golden/parity_" + arch + "." + ext;
}

}  // namespace kumiko::parity
