// The NCCL communicator: collectives on device buffers, one ncclComm per process
// group, bootstrapped by broadcasting the ncclUniqueId over another Communicator
// (MPI). Compiled with KUMIKO_CUDA; without it make_nccl() explains why not.
// Every NCCL and CUDA return code is checked and turned into a CommError carrying
// the library's message.
#include "kumiko/comm/nccl.h"
#include "kumiko/comm/watchdog.h"

#include <algorithm>
#include <cstdlib>

#ifdef KUMIKO_WITH_NCCL
#include <cuda_runtime.h>
#include <nccl.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace kumiko::comm {
namespace {

void check_cuda(cudaError_t rc, const std::string& what) {
  if (rc != cudaSuccess) throw CommError("CUDA error in " + what + ": " + cudaGetErrorString(rc));
}

ncclDataType_t nccl_type(DType t) {
  switch (t) {
    case DType::f32: return ncclFloat32;
    case DType::f64: return ncclFloat64;
    case DType::bf16: return ncclBfloat16;
    case DType::i32: return ncclInt32;
    case DType::i64: return ncclInt64;
  }
  return ncclFloat32;
}
ncclRedOp_t nccl_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::sum: return ncclSum;
    case ReduceOp::avg: return ncclAvg;
    case ReduceOp::max: return ncclMax;
  }
  return ncclSum;
}

// Completes when the work queued on the stream so far has finished. Registered
// with the watchdog (as `op` on `group`) from creation until wait()/test() completes.
class EventRequest : public Request {
 public:
  EventRequest(cudaStream_t stream, std::string what, const char* op, const WatchGroup* group)
      : what_(std::move(what)) {
    check_cuda(cudaEventCreateWithFlags(&event_, cudaEventDisableTiming), what_);
    check_cuda(cudaEventRecord(event_, stream), what_);
    slot_ = Watchdog::begin(op, group);
  }
  ~EventRequest() override {
    Watchdog::end(slot_);
    cudaEventDestroy(event_);
  }
  void wait() override {
    const cudaError_t rc = cudaEventSynchronize(event_);
    release();
    check_cuda(rc, what_);
  }
  bool test() override {
    const cudaError_t rc = cudaEventQuery(event_);
    if (rc == cudaErrorNotReady) return false;
    release();
    check_cuda(rc, what_);
    return true;
  }

 private:
  void release() {
    Watchdog::end(slot_);
    slot_ = -1;
  }
  cudaEvent_t event_{};
  std::string what_;
  int slot_ = -1;
};

class NcclCommunicator : public Communicator {
 public:
  // world_ranks: the members' world ranks for the watchdog's messages ("" if unknown).
  NcclCommunicator(ncclComm_t comm, std::string name, int world_rank, const std::string& world_ranks)
      : comm_(comm), name_(std::move(name)), world_rank_(world_rank) {
    check(ncclCommUserRank(comm_, &rank_), "ncclCommUserRank");
    check(ncclCommCount(comm_, &size_), "ncclCommCount");
    check_cuda(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");
    watch_ = Watchdog::group(name_ + " (NCCL)", world_ranks);
    // The watchdog polls NCCL's asynchronous error and, when it fires, aborts the
    // communicator (never a blocking destroy: peers may be gone).
    ncclComm_t c = comm_;
    const std::string group = name_;
    watch_handler_ = Watchdog::add_handler([c] { ncclCommAbort(c); }, [c, group, world_rank] {
      ncclResult_t async = ncclSuccess;
      if (ncclCommGetAsyncError(c, &async) != ncclSuccess || async == ncclSuccess || async == ncclInProgress)
        return std::string();
      return "rank " + std::to_string(world_rank) + ": NCCL asynchronous error on group '" + group +
             "': " + ncclGetErrorString(async) + "; ending the job (exit " + std::to_string(kWatchdogExitCode) +
             ")";
    });
  }
  ~NcclCommunicator() override {
    Watchdog::remove_handler(watch_handler_);
    cudaStreamDestroy(stream_);
    ncclCommDestroy(comm_);
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  const std::string& name() const override { return name_; }
  int world_rank() const override { return world_rank_; }
  cudaStream_t stream() const { return stream_; }  // where its operations are queued
  void* device_stream() override { return stream_; }

  void barrier() override {
    WatchScope watch("barrier", watch_);
    int32_t* one = nullptr;
    check_cuda(cudaMallocAsync(reinterpret_cast<void**>(&one), sizeof(int32_t), stream_), where("barrier"));
    check(ncclAllReduce(one, one, 1, ncclInt32, ncclSum, comm_, stream_), where("barrier"));
    check_cuda(cudaFreeAsync(one, stream_), where("barrier"));
    synchronize("barrier");
  }
  std::unique_ptr<Communicator> split(int color, int key, const std::string& name) override {
    ncclComm_t out;
    check(ncclCommSplit(comm_, color, key, &out, nullptr), where("split"));
    return std::make_unique<NcclCommunicator>(out, name, world_rank_, "");
  }
  [[noreturn]] void abort(int code) override {
    Watchdog::remove_handler(watch_handler_);
    ncclCommAbort(comm_);  // never a blocking destroy on failure
    std::_Exit(code);
  }

 protected:
  void all_reduce_raw(void* data, int64_t n, DType t, ReduceOp op) override {
    iall_reduce_raw(data, n, t, op)->wait();
  }
  std::unique_ptr<Request> iall_reduce_raw(void* data, int64_t n, DType t, ReduceOp op) override {
    check(ncclAllReduce(data, data, static_cast<size_t>(n), nccl_type(t), nccl_op(op), comm_, stream_),
          where("all_reduce"));
    return std::make_unique<EventRequest>(stream_, where("all_reduce"), "all_reduce", watch_);
  }
  std::unique_ptr<Request> ireduce_scatter_raw(const void* send, void* recv, const std::vector<int64_t>& counts,
                                               DType t, ReduceOp op) override {
    KUMIKO_CHECK(static_cast<int>(counts.size()) == size_, "reduce_scatter: ", counts.size(), " counts for ",
                 size_, " ranks");
    const bool even = std::all_of(counts.begin(), counts.end(), [&](int64_t c) { return c == counts[0]; });
    if (even) {
      check(ncclReduceScatter(send, recv, static_cast<size_t>(counts[0]), nccl_type(t), nccl_op(op), comm_,
                              stream_),
            where("reduce_scatter"));
    } else {  // uneven blocks: one reduce per destination rank, grouped
      check(ncclGroupStart(), where("reduce_scatter"));
      int64_t offset = 0;
      for (int r = 0; r < size_; ++r) {
        const char* src = static_cast<const char*>(send) + offset * dtype_bytes(t);
        check(ncclReduce(src, r == rank_ ? recv : nullptr, static_cast<size_t>(counts[r]), nccl_type(t),
                         nccl_op(op), r, comm_, stream_),
              where("reduce_scatter"));
        offset += counts[r];
      }
      check(ncclGroupEnd(), where("reduce_scatter"));
    }
    return std::make_unique<EventRequest>(stream_, where("reduce_scatter"), "reduce_scatter", watch_);
  }
  std::unique_ptr<Request> iall_gather_raw(void* data, const std::vector<int64_t>& counts, DType t) override {
    KUMIKO_CHECK(static_cast<int>(counts.size()) == size_, "all_gather: ", counts.size(), " counts for ", size_,
                 " ranks");
    // In place, uneven blocks: every rank broadcasts its block, grouped.
    check(ncclGroupStart(), where("all_gather"));
    int64_t offset = 0;
    for (int r = 0; r < size_; ++r) {
      char* block = static_cast<char*>(data) + offset * dtype_bytes(t);
      check(ncclBroadcast(block, block, static_cast<size_t>(counts[r]), nccl_type(t), r, comm_, stream_),
            where("all_gather"));
      offset += counts[r];
    }
    check(ncclGroupEnd(), where("all_gather"));
    return std::make_unique<EventRequest>(stream_, where("all_gather"), "all_gather", watch_);
  }
  void broadcast_raw(void* data, int64_t n, DType t, int root) override {
    WatchScope watch("broadcast", watch_);
    check(ncclBroadcast(data, data, static_cast<size_t>(n), nccl_type(t), root, comm_, stream_),
          where("broadcast"));
    synchronize("broadcast");
  }
  void send_raw(const void* data, int64_t n, DType t, int peer, int) override {
    WatchScope watch("send", watch_);
    check(ncclSend(data, static_cast<size_t>(n), nccl_type(t), peer, comm_, stream_), where("send"));
    synchronize("send");
  }
  std::unique_ptr<Request> isend_raw(const void* data, int64_t n, DType t, int peer, int) override {
    check(ncclSend(data, static_cast<size_t>(n), nccl_type(t), peer, comm_, stream_), where("send"));
    return std::make_unique<EventRequest>(stream_, where("send"), "send", watch_);
  }
  void recv_raw(void* data, int64_t n, DType t, int peer, int) override {
    WatchScope watch("recv", watch_);
    check(ncclRecv(data, static_cast<size_t>(n), nccl_type(t), peer, comm_, stream_), where("recv"));
    synchronize("recv");
  }

 private:
  std::string where(const char* op) const {
    return std::string(op) + " on NCCL group '" + name_ + "' (rank " + std::to_string(rank_) + " of " +
           std::to_string(size_) + ")";
  }
  void check(ncclResult_t rc, const std::string& what) const {
    if (rc == ncclSuccess || rc == ncclInProgress) return;
    std::string message = ncclGetErrorString(rc);
    if (const char* last = ncclGetLastError(comm_); last && *last) message += std::string(": ") + last;
    throw CommError("NCCL error in " + what + ": " + message);
  }
  void synchronize(const char* op) { check_cuda(cudaStreamSynchronize(stream_), where(op)); }

  ncclComm_t comm_;
  cudaStream_t stream_{};
  std::string name_;
  int rank_ = 0, size_ = 1, world_rank_ = 0;
  const WatchGroup* watch_ = nullptr;
  int watch_handler_ = -1;
};

}  // namespace

std::unique_ptr<Communicator> make_nccl(Communicator& bootstrap, const std::string& name) {
  int devices = 0;
  check_cuda(cudaGetDeviceCount(&devices), "cudaGetDeviceCount");
  KUMIKO_USER_CHECK(devices > 0, "NCCL communicator: no CUDA device visible to rank ", bootstrap.world_rank());
  check_cuda(cudaSetDevice(local_rank_from_launcher() % devices), "cudaSetDevice");
  ncclUniqueId id;
  if (bootstrap.rank() == 0) {
    const ncclResult_t rc = ncclGetUniqueId(&id);
    if (rc != ncclSuccess) throw CommError(std::string("NCCL error in ncclGetUniqueId: ") + ncclGetErrorString(rc));
  }
  // The id is 128 opaque bytes: broadcast them as 16 int64 over the bootstrap group.
  static_assert(sizeof(id) % sizeof(int64_t) == 0);
  int64_t words[sizeof(id) / sizeof(int64_t)];
  std::memcpy(words, &id, sizeof(id));
  bootstrap.broadcast(words, static_cast<int64_t>(sizeof(id) / sizeof(int64_t)), 0);
  std::memcpy(&id, words, sizeof(id));
  // The members' world ranks, for the watchdog's messages.
  std::vector<int64_t> members(static_cast<size_t>(bootstrap.size()), 0);
  members[static_cast<size_t>(bootstrap.rank())] = bootstrap.world_rank();
  bootstrap.all_gather(members.data(), std::vector<int64_t>(members.size(), 1));
  std::string world_ranks;
  for (int64_t r : members) {
    if (!world_ranks.empty()) world_ranks += ',';
    world_ranks += std::to_string(r);
  }
  ncclComm_t comm;
  const ncclResult_t rc = ncclCommInitRank(&comm, bootstrap.size(), id, bootstrap.rank());
  if (rc != ncclSuccess) {
    std::string message = std::string("NCCL error in ncclCommInitRank on group '") + name + "': " + ncclGetErrorString(rc);
    if (const char* last = ncclGetLastError(nullptr); last && *last) message += std::string(": ") + last;
    if (rc == ncclInvalidUsage) {  // e.g. two ranks on one GPU (more ranks per node than GPUs)
      int device = -1;
      cudaGetDevice(&device);
      message += " (this rank is on GPU " + std::to_string(device) + " of " + std::to_string(devices) +
                 " visible; ranks of one communicator cannot share a GPU: run one rank per GPU)";
    }
    throw CommError(message);
  }
  return std::make_unique<NcclCommunicator>(comm, name, bootstrap.world_rank(), world_ranks);
}

bool nccl_available() { return true; }

void* nccl_stream(Communicator& comm) {
  auto* nccl = dynamic_cast<NcclCommunicator*>(&comm);
  KUMIKO_CHECK(nccl != nullptr, "nccl_stream: communicator '", comm.name(), "' is not an NCCL communicator");
  return nccl->stream();
}

}  // namespace kumiko::comm

#else  // !KUMIKO_WITH_NCCL

namespace kumiko::comm {
std::unique_ptr<Communicator> make_nccl(Communicator&, const std::string&) {
  throw UserError("the NCCL communicator needs a build with CUDA (KUMIKO_CUDA=ON, nvcc found)");
}
bool nccl_available() { return false; }
void* nccl_stream(Communicator& comm) {
  KUMIKO_CHECK(false, "nccl_stream: communicator '", comm.name(), "' is not an NCCL communicator (no CUDA)");
  return nullptr;
}
}  // namespace kumiko::comm

#endif

// The launcher's node-local placement, with or without CUDA (the CPU backend's
// pre-flight memory check divides the node's memory by the ranks on it).
namespace kumiko::comm {
int local_rank_from_launcher() {
  for (const char* var : {"OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID", "MPI_LOCALRANKID", "LOCAL_RANK"})
    if (const char* v = std::getenv(var)) return std::atoi(v);
  return 0;
}

int local_size_from_launcher() {
  for (const char* var : {"OMPI_COMM_WORLD_LOCAL_SIZE", "SLURM_NTASKS_PER_NODE", "MPI_LOCALNRANKS", "LOCAL_WORLD_SIZE"})
    if (const char* v = std::getenv(var)) return std::max(1, std::atoi(v));
  return 1;
}
}  // namespace kumiko::comm
