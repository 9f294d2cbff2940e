#pragma once
// The process grid: world = dp x tp x pp ranks. Rank order (Megatron's): tp
// fastest, then dp, then pp, so that a tensor-parallel group sits on consecutive
// ranks (inside one node when ranks are packed by node):
//   world_rank = pp_rank * (dp * tp) + dp_rank * tp + tp_rank
#include <memory>

#include "kumiko/comm/communicator.h"
#include "kumiko/config/config.h"

namespace kumiko::parallel {

class ProcessGrid {
 public:
  // Splits `world` into the dp, tp and pp groups. A world size other than
  // dp*tp*pp is a UserError with the same message on every rank.
  ProcessGrid(comm::Communicator& world, const config::ParallelConfig& p);

  comm::Communicator& world() { return world_; }
  comm::Communicator& dp_group() { return *dp_; }
  comm::Communicator& tp_group() { return *tp_; }
  comm::Communicator& pp_group() { return *pp_; }
  int dp() const { return dp_size_; }
  int tp() const { return tp_size_; }
  int pp() const { return pp_size_; }
  int dp_rank() const { return dp_rank_; }
  int tp_rank() const { return tp_rank_; }
  int pp_rank() const { return pp_rank_; }

 private:
  comm::Communicator& world_;
  int dp_size_, tp_size_, pp_size_;
  int dp_rank_, tp_rank_, pp_rank_;
  std::unique_ptr<comm::Communicator> dp_, tp_, pp_;
};

}  // namespace kumiko::parallel
