#pragma once
// Private header of the MPI communicator (keeps mpi.h out of every other file).
#ifdef KUMIKO_WITH_MPI
#include <functional>
#include <memory>
#include <string>

#include "kumiko/comm/communicator.h"
#include "kumiko/comm/watchdog.h"

namespace kumiko::comm {

void check(int mpi_rc, const std::string& what);

class MpiCommunicator : public Communicator {
 public:
  // comm points to an MPI_Comm; owned communicators are freed on destruction.
  MpiCommunicator(void* comm, bool owned, std::string name);
  ~MpiCommunicator() override;
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  const std::string& name() const override { return name_; }
  int world_rank() const override { return world_rank_; }
  void barrier() override;
  std::unique_ptr<Communicator> split(int color, int key, const std::string& name) override;
  [[noreturn]] void abort(int code) override;
  const void* mpi_comm() const override;

 protected:
  void all_reduce_raw(void* data, int64_t n, DType t, ReduceOp op) override;
  std::unique_ptr<Request> iall_reduce_raw(void* data, int64_t n, DType t, ReduceOp op) override;
  std::unique_ptr<Request> ireduce_scatter_raw(const void* send, void* recv, const std::vector<int64_t>& counts,
                                               DType t, ReduceOp op) override;
  std::unique_ptr<Request> iall_gather_raw(void* data, const std::vector<int64_t>& counts, DType t) override;
  void broadcast_raw(void* data, int64_t n, DType t, int root) override;
  void send_raw(const void* data, int64_t n, DType t, int peer, int tag) override;
  void recv_raw(void* data, int64_t n, DType t, int peer, int tag) override;
  std::unique_ptr<Request> isend_raw(const void* data, int64_t n, DType t, int peer, int tag) override;

 private:
  std::string where(const char* op) const;
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::string name_;
  int rank_ = 0, size_ = 1, world_rank_ = 0;
  const WatchGroup* watch_ = nullptr;  // this group in the watchdog's messages
};

}  // namespace kumiko::comm
#endif
