// The MPI communicator (host buffers). The only file besides src/comm/world.cpp
// that includes mpi.h. Every MPI return code is checked and turned into a
// CommError carrying MPI's message, the operation and the group.
#ifdef KUMIKO_WITH_MPI
#include "mpi_communicator.h"

#include <mpi.h>

#include <climits>
#include <cstring>
#include <numeric>

namespace kumiko::comm {
namespace {

MPI_Datatype mpi_type(DType t) {
  switch (t) {
    case DType::f32: return MPI_FLOAT;
    case DType::f64: return MPI_DOUBLE;
    case DType::i32: return MPI_INT32_T;
    case DType::i64: return MPI_INT64_T;
  }
  return MPI_DATATYPE_NULL;
}
MPI_Op mpi_op(ReduceOp op) { return op == ReduceOp::max ? MPI_MAX : MPI_SUM; }

int to_int(int64_t n, const char* what) {
  if (n < 0 || n > INT_MAX) throw CommError(std::string(what) + ": element count " + std::to_string(n) +
                                            " does not fit MPI's int counts; use smaller buckets");
  return static_cast<int>(n);
}

// Divides by the group size after a sum, for ReduceOp::avg.
void scale_avg(void* data, int64_t n, DType t, int size) {
  switch (t) {
    case DType::f32: for (int64_t i = 0; i < n; ++i) static_cast<float*>(data)[i] /= static_cast<float>(size); break;
    case DType::f64: for (int64_t i = 0; i < n; ++i) static_cast<double*>(data)[i] /= size; break;
    case DType::i32: for (int64_t i = 0; i < n; ++i) static_cast<int32_t*>(data)[i] /= size; break;
    case DType::i64: for (int64_t i = 0; i < n; ++i) static_cast<int64_t*>(data)[i] /= size; break;
  }
}

class MpiRequest : public Request {
 public:
  MpiRequest(MPI_Request r, std::string what, std::function<void()> after)
      : request_(r), what_(std::move(what)), after_(std::move(after)) {}
  ~MpiRequest() override {
    if (!done_) {
      try {
        wait();
      } catch (...) {
      }
    }
  }
  void wait() override {
    if (done_) return;
    check(MPI_Wait(&request_, MPI_STATUS_IGNORE), what_);
    finish();
  }
  bool test() override {
    if (done_) return true;
    int flag = 0;
    check(MPI_Test(&request_, &flag, MPI_STATUS_IGNORE), what_);
    if (flag) finish();
    return done_;
  }

 private:
  void finish() {
    done_ = true;
    if (after_) after_();
  }
  MPI_Request request_;
  std::string what_;
  std::function<void()> after_;
  bool done_ = false;
};

}  // namespace

void check(int rc, const std::string& what) {
  if (rc == MPI_SUCCESS) return;
  char message[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, message, &len);
  throw CommError("MPI error in " + what + ": " + std::string(message, len));
}

struct MpiCommunicator::Impl {
  MPI_Comm comm = MPI_COMM_NULL;
  bool owned = false;
};

MpiCommunicator::MpiCommunicator(void* comm, bool owned, std::string name)
    : impl_(std::make_unique<Impl>()), name_(std::move(name)) {
  impl_->comm = *static_cast<MPI_Comm*>(comm);
  impl_->owned = owned;
  MPI_Comm_set_errhandler(impl_->comm, MPI_ERRORS_RETURN);
  check(MPI_Comm_rank(impl_->comm, &rank_), "MPI_Comm_rank");
  check(MPI_Comm_size(impl_->comm, &size_), "MPI_Comm_size");
  MPI_Comm_rank(MPI_COMM_WORLD, &world_rank_);
}

MpiCommunicator::~MpiCommunicator() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (impl_->owned && !finalized) MPI_Comm_free(&impl_->comm);
}

std::string MpiCommunicator::where(const char* op) const {
  return std::string(op) + " on group '" + name_ + "' (rank " + std::to_string(rank_) + " of " +
         std::to_string(size_) + ")";
}

void MpiCommunicator::barrier() { check(MPI_Barrier(impl_->comm), where("barrier")); }

std::unique_ptr<Communicator> MpiCommunicator::split(int color, int key, const std::string& name) {
  MPI_Comm out;
  check(MPI_Comm_split(impl_->comm, color, key, &out), where("split"));
  return std::make_unique<MpiCommunicator>(&out, true, name);
}

void MpiCommunicator::abort(int code) {
  MPI_Abort(MPI_COMM_WORLD, code);
  std::_Exit(code);
}

void MpiCommunicator::all_reduce_raw(void* data, int64_t n, DType t, ReduceOp op) {
  check(MPI_Allreduce(MPI_IN_PLACE, data, to_int(n, "all_reduce"), mpi_type(t), mpi_op(op), impl_->comm),
        where("all_reduce"));
  if (op == ReduceOp::avg) scale_avg(data, n, t, size_);
}

std::unique_ptr<Request> MpiCommunicator::iall_reduce_raw(void* data, int64_t n, DType t, ReduceOp op) {
  MPI_Request r;
  check(MPI_Iallreduce(MPI_IN_PLACE, data, to_int(n, "all_reduce"), mpi_type(t), mpi_op(op), impl_->comm, &r),
        where("all_reduce"));
  const int size = size_;
  return std::make_unique<MpiRequest>(r, where("all_reduce"), [=] {
    if (op == ReduceOp::avg) scale_avg(data, n, t, size);
  });
}

std::unique_ptr<Request> MpiCommunicator::ireduce_scatter_raw(const void* send, void* recv,
                                                              const std::vector<int64_t>& counts, DType t,
                                                              ReduceOp op) {
  KUMIKO_CHECK(static_cast<int>(counts.size()) == size_, "reduce_scatter: ", counts.size(), " counts for ",
               size_, " ranks");
  auto icounts = std::make_shared<std::vector<int>>();
  for (int64_t c : counts) icounts->push_back(to_int(c, "reduce_scatter"));
  MPI_Request r;
  check(MPI_Ireduce_scatter(send, recv, icounts->data(), mpi_type(t), mpi_op(op), impl_->comm, &r),
        where("reduce_scatter"));
  const int64_t mine = counts[rank_];
  const int size = size_;
  return std::make_unique<MpiRequest>(r, where("reduce_scatter"), [=] {
    (void)icounts;  // kept alive until completion
    if (op == ReduceOp::avg) scale_avg(recv, mine, t, size);
  });
}

std::unique_ptr<Request> MpiCommunicator::iall_gather_raw(void* data, const std::vector<int64_t>& counts,
                                                          DType t) {
  KUMIKO_CHECK(static_cast<int>(counts.size()) == size_, "all_gather: ", counts.size(), " counts for ", size_,
               " ranks");
  auto icounts = std::make_shared<std::vector<int>>();
  auto displs = std::make_shared<std::vector<int>>();
  int64_t offset = 0;
  for (int64_t c : counts) {
    icounts->push_back(to_int(c, "all_gather"));
    displs->push_back(to_int(offset, "all_gather"));
    offset += c;
  }
  MPI_Request r;
  check(MPI_Iallgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, data, icounts->data(), displs->data(), mpi_type(t),
                        impl_->comm, &r),
        where("all_gather"));
  return std::make_unique<MpiRequest>(r, where("all_gather"), [icounts, displs] {});
}

void MpiCommunicator::broadcast_raw(void* data, int64_t n, DType t, int root) {
  check(MPI_Bcast(data, to_int(n, "broadcast"), mpi_type(t), root, impl_->comm), where("broadcast"));
}

void MpiCommunicator::send_raw(const void* data, int64_t n, DType t, int peer, int tag) {
  check(MPI_Send(data, to_int(n, "send"), mpi_type(t), peer, tag, impl_->comm),
        where("send") + " to rank " + std::to_string(peer));
}

void MpiCommunicator::recv_raw(void* data, int64_t n, DType t, int peer, int tag) {
  check(MPI_Recv(data, to_int(n, "recv"), mpi_type(t), peer, tag, impl_->comm, MPI_STATUS_IGNORE),
        where("recv") + " from rank " + std::to_string(peer));
}

}  // namespace kumiko::comm
#endif  // KUMIKO_WITH_MPI
