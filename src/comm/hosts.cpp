#include "kumiko/comm/hosts.h"

#include <unistd.h>

#include <algorithm>
#include <cstdint>

namespace kumiko::comm {

namespace {
constexpr int kHostChars = 64;
}

std::vector<std::string> host_names(Communicator& world) {
  // One fixed-size slot per rank, summed over the world (each rank fills its own).
  std::vector<int32_t> chars(static_cast<size_t>(world.size()) * kHostChars, 0);
  char host[kHostChars] = {};
  gethostname(host, kHostChars - 1);
  for (int i = 0; i < kHostChars && host[i] != '\0'; ++i)
    chars[static_cast<size_t>(world.rank()) * kHostChars + i] = static_cast<unsigned char>(host[i]);
  world.all_reduce(chars.data(), static_cast<int64_t>(chars.size()), ReduceOp::sum);
  std::vector<std::string> hosts;
  for (int r = 0; r < world.size(); ++r) {
    std::string name;
    for (int i = 0; i < kHostChars && chars[static_cast<size_t>(r) * kHostChars + i] != 0; ++i)
      name += static_cast<char>(chars[static_cast<size_t>(r) * kHostChars + i]);
    hosts.push_back(name);
  }
  return hosts;
}

std::unique_ptr<Communicator> split_by_host(Communicator& world, const std::vector<std::string>& hosts) {
  // The colour is the first rank on the same host: equal exactly when the names are.
  const auto first = std::find(hosts.begin(), hosts.end(), hosts[static_cast<size_t>(world.rank())]);
  return world.split(static_cast<int>(first - hosts.begin()), world.rank(), "node");
}

}  // namespace kumiko::comm
