#include "kumiko/parallel/pipeline.h"

#include <algorithm>
#include <set>

#include "kumiko/core/error.h"
#include "parallel/pipeline_impl.h"

namespace kumiko::parallel {

int activation_slots(const std::vector<Action>& actions, int micro_batches, int chunks) {
  for (int slots = 1; slots < micro_batches; ++slots) {
    bool ok = true;
    std::vector<std::set<int>> live(chunks);  // micro-batches forwarded, not yet backwarded
    for (const Action& a : actions) {
      auto& l = live[a.virtual_stage];
      if (a.type == ActionType::forward) {
        for (int other : l) ok = ok && other % slots != a.micro_batch % slots;
        l.insert(a.micro_batch);
      } else if (a.type == ActionType::backward) {
        l.erase(a.micro_batch);
      }
    }
    if (ok) return slots;
  }
  return micro_batches;
}

template class BasicPipelineRunner<backend::Cpu<float>>;

model::LogicalTensors gather_stages(comm::Communicator& pp, const std::vector<model::ParameterSpec>& all_specs,
                                    const std::vector<std::vector<std::string>>& names_by_stage,
                                    std::map<std::string, std::vector<float>> mine) {
  const std::set<std::string> on_first(names_by_stage[0].begin(), names_by_stage[0].end());
  std::map<std::string, int64_t> numel;
  for (const auto& s : all_specs) numel[s.name] = numel_of(s.shape);
  for (int s = 1; s < pp.size(); ++s) {
    int tag = 0;
    for (const auto& name : names_by_stage[s]) {
      if (on_first.count(name)) continue;
      if (pp.rank() == s) pp.send(mine.at(name).data(), numel.at(name), 0, tag);
      if (pp.rank() == 0) {
        auto& dst = mine[name];
        dst.resize(numel.at(name));
        pp.recv(dst.data(), numel.at(name), s, tag);
      }
      ++tag;
    }
  }
  model::LogicalTensors out;
  if (pp.rank() != 0) return out;
  for (const auto& spec : all_specs) {
    auto it = mine.find(spec.name);
    KUMIKO_CHECK(it != mine.end(), "pipeline gather: no stage holds ", spec.name);
    out.push_back(std::move(it->second));
  }
  return out;
}

}  // namespace kumiko::parallel
