#pragma once
// Which ranks share a machine: every rank's host name, and a communicator of the
// ranks on this rank's machine (grouped by exact host name and boot id, so that two
// machines or containers with one host name stay apart).
#include <memory>
#include <string>
#include <vector>

#include "kumiko/comm/communicator.h"

namespace kumiko::comm {

// This machine's host name (the first 63 characters).
std::string host_name();

// Every rank's host name (the first 63 characters), indexed by rank of `world`.
// Collective over `world`.
std::vector<std::string> host_names(Communicator& world);

// The ranks of `world` on this rank's machine, ordered as in `world`, named "node".
// Collective over `world`.
std::unique_ptr<Communicator> split_by_host(Communicator& world);

}  // namespace kumiko::comm
