#include "kumiko/comm/hosts.h"

#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <fstream>

namespace kumiko::comm {

namespace {

// Every rank's `mine` (its first `width` - 1 characters), indexed by rank: one
// fixed-size slot per rank, summed over the world (each rank fills its own).
std::vector<std::string> gather_names(Communicator& world, const std::string& mine, int width) {
  std::vector<int32_t> chars(static_cast<size_t>(world.size()) * width, 0);
  for (int i = 0; i < width - 1 && i < static_cast<int>(mine.size()); ++i)
    chars[static_cast<size_t>(world.rank()) * width + i] = static_cast<unsigned char>(mine[i]);
  world.all_reduce(chars.data(), static_cast<int64_t>(chars.size()), ReduceOp::sum);
  std::vector<std::string> names;
  for (int r = 0; r < world.size(); ++r) {
    std::string name;
    for (int i = 0; i < width && chars[static_cast<size_t>(r) * width + i] != 0; ++i)
      name += static_cast<char>(chars[static_cast<size_t>(r) * width + i]);
    names.push_back(name);
  }
  return names;
}

}  // namespace

std::string host_name() {
  char host[64] = {};
  gethostname(host, sizeof(host) - 1);
  return host;
}

std::vector<std::string> host_names(Communicator& world) { return gather_names(world, host_name(), 64); }

std::unique_ptr<Communicator> split_by_host(Communicator& world) {
  // The kernel's boot id tells machines apart that share a host name; containers on
  // one machine share it.
  std::string boot;
  std::ifstream("/proc/sys/kernel/random/boot_id") >> boot;
  const std::vector<std::string> keys = gather_names(world, host_name() + "|" + boot, 128);
  // The colour is the first rank with the same key: equal exactly when the keys are.
  const auto first = std::find(keys.begin(), keys.end(), keys[static_cast<size_t>(world.rank())]);
  return world.split(static_cast<int>(first - keys.begin()), world.rank(), "node");
}

}  // namespace kumiko::comm
