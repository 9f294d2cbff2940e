// The one-rank communicator: collectives over a single rank are copies or no-ops.
#include <cstring>

#include "kumiko/comm/communicator.h"

namespace kumiko::comm {
namespace {


class DoneRequest : public Request {
 public:
  void wait() override {}
  bool test() override { return true; }
};

class LocalCommunicator : public Communicator {
 public:
  explicit LocalCommunicator(std::string name) : name_(std::move(name)) {}
  int rank() const override { return 0; }
  int size() const override { return 1; }
  const std::string& name() const override { return name_; }
  int world_rank() const override { return 0; }
  void barrier() override {}
  std::unique_ptr<Communicator> split(int, int, const std::string& name) override {
    return std::make_unique<LocalCommunicator>(name);
  }
  [[noreturn]] void abort(int code) override { std::_Exit(code); }

 protected:
  void all_reduce_raw(void*, int64_t, DType, ReduceOp) override {}
  std::unique_ptr<Request> iall_reduce_raw(void*, int64_t, DType, ReduceOp) override {
    return std::make_unique<DoneRequest>();
  }
  std::unique_ptr<Request> ireduce_scatter_raw(const void* send, void* recv, const std::vector<int64_t>& counts,
                                               DType t, ReduceOp) override {
    KUMIKO_CHECK(counts.size() == 1, "reduce_scatter on 1 rank needs 1 count, got ", counts.size());
    if (send != recv) std::memmove(recv, send, static_cast<size_t>(counts[0]) * dtype_bytes(t));
    return std::make_unique<DoneRequest>();
  }
  std::unique_ptr<Request> iall_gather_raw(void*, const std::vector<int64_t>& counts, DType) override {
    KUMIKO_CHECK(counts.size() == 1, "all_gather on 1 rank needs 1 count, got ", counts.size());
    return std::make_unique<DoneRequest>();
  }
  void broadcast_raw(void*, int64_t, DType, int root) override {
    KUMIKO_CHECK(root == 0, "broadcast root ", root, " on a 1-rank communicator");
  }
  void send_raw(const void*, int64_t, DType, int peer, int) override {
    throw CommError("send to rank " + std::to_string(peer) + " on a 1-rank communicator");
  }
  std::unique_ptr<Request> isend_raw(const void*, int64_t, DType, int peer, int) override {
    throw CommError("send to rank " + std::to_string(peer) + " on a 1-rank communicator");
  }
  void recv_raw(void*, int64_t, DType, int peer, int) override {
    throw CommError("recv from rank " + std::to_string(peer) + " on a 1-rank communicator");
  }

 private:
  std::string name_;
};

}  // namespace

std::unique_ptr<Communicator> make_local() { return std::make_unique<LocalCommunicator>("world"); }

}  // namespace kumiko::comm
