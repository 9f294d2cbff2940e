#pragma once
// The NCCL communicator (device buffers). Available in builds with CUDA
// (nccl_available()); otherwise make_nccl throws a UserError saying so.
#include <memory>
#include <string>

#include "kumiko/comm/communicator.h"

namespace kumiko::comm {

bool nccl_available();
// One NCCL communicator over the ranks of `bootstrap` (usually MPI's world or a
// process group of it): rank 0 creates the ncclUniqueId and broadcasts it over
// `bootstrap`; each rank first selects GPU (node-local rank % visible devices).
// Buffers passed to its collectives must be device memory.
std::unique_ptr<Communicator> make_nccl(Communicator& bootstrap, const std::string& name);
// The CUDA stream (a cudaStream_t) on which an NCCL communicator queues its
// operations, so that device code can order work against it with events.
void* nccl_stream(Communicator& nccl);
// The node-local rank from the launcher's variables (Open MPI, Slurm, MPICH), or 0.
int local_rank_from_launcher();
// Ranks of this job on this node, from the same variables, or 1.
int local_size_from_launcher();

}  // namespace kumiko::comm
