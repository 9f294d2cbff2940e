#include "kumiko/parallel/grid.h"

namespace kumiko::parallel {

ProcessGrid::ProcessGrid(comm::Communicator& world, const config::ParallelConfig& p)
    : world_(world), dp_size_(p.dp), tp_size_(p.tp), pp_size_(p.pp) {
  const int want = p.dp * p.tp * p.pp;
  KUMIKO_USER_CHECK(world.size() == want, "parallel.dp x parallel.tp x parallel.pp = ", p.dp, " x ", p.tp,
                    " x ", p.pp, " = ", want, " ranks, but the job has ", world.size(),
                    " (set the product equal to the number of processes)");
  const int r = world.rank();
  tp_rank_ = r % p.tp;
  dp_rank_ = (r / p.tp) % p.dp;
  pp_rank_ = r / (p.tp * p.dp);
  // Ranks sharing everything but one coordinate form that coordinate's group.
  tp_ = world.split(pp_rank_ * p.dp + dp_rank_, tp_rank_, "tp");
  dp_ = world.split(pp_rank_ * p.tp + tp_rank_, dp_rank_, "dp");
  pp_ = world.split(dp_rank_ * p.tp + tp_rank_, pp_rank_, "pp");
}

}  // namespace kumiko::parallel
