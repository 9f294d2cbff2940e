#pragma once
// Which ranks share a node: every rank's host name, and a communicator of the
// ranks on this rank's host (grouped by exact name, not by a hash of it).
#include <memory>
#include <string>
#include <vector>

#include "kumiko/comm/communicator.h"

namespace kumiko::comm {

// Every rank's host name (the first 63 characters), indexed by rank of `world`.
// Collective over `world`: one all-reduce of 64 ints per rank.
std::vector<std::string> host_names(Communicator& world);

// The ranks of `world` on this rank's host, ordered as in `world`, named "node".
// Collective over `world`.
std::unique_ptr<Communicator> split_by_host(Communicator& world, const std::vector<std::string>& hosts);

}  // namespace kumiko::comm
