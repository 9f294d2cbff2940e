#include "kumiko/model/sharding.h"

#include <algorithm>

namespace kumiko::model {

LogicalTensors gather_logical(const ParameterStore<float>& p, const Dims& dims, const PipelineStage& stage,
                              const TensorParallel& tp, const float* flat) {
  const int n = tp.size();
  const float* base = p.flat_values().data();
  // Every rank's parameter specs (their shards), to place each rank's block.
  std::vector<std::vector<ParameterSpec>> rank_specs;
  for (int r = 0; r < n; ++r) rank_specs.push_back(parameter_specs(dims, n, r, &stage));
  LogicalTensors out(p.size());
  for (size_t i = 0; i < p.size(); ++i) {
    const int idx = static_cast<int>(i);
    const auto& spec = p.spec(idx);
    const float* local = flat + (p.value(idx) - base);
    auto& logical = out[i];
    logical.assign(static_cast<size_t>(numel_of(spec.shape)), 0.0f);
    if (spec.split == Split::none || n == 1) {
      std::copy_n(local, logical.size(), logical.data());
      continue;
    }
    const int64_t count = p.numel(idx);  // even splits: every rank holds as many
    std::vector<float> all(static_cast<size_t>(count * n));
    std::copy_n(local, count, all.data() + tp.rank() * count);
    tp.group->all_gather(all.data(), std::vector<int64_t>(n, count));
    for (int r = 0; r < n; ++r)
      rank_specs[r][i].for_each_run([&](int64_t l, int64_t g, int64_t c) {
        std::copy_n(all.data() + r * count + l, c, logical.data() + g);
      });
  }
  return out;
}

void scatter_logical(const ParameterStore<float>& p, const LogicalTensors& logical, float* flat) {
  const float* base = p.flat_values().data();
  for (size_t i = 0; i < p.size(); ++i) {
    const int idx = static_cast<int>(i);
    float* local = flat + (p.value(idx) - base);
    p.spec(idx).for_each_run([&](int64_t l, int64_t g, int64_t c) {
      std::copy_n(logical[i].data() + g, c, local + l);
    });
  }
}

}  // namespace kumiko::model
