// The MPI communicator (host buffers). The only file besides src/comm/world.cpp (and
// src/ckpt/h5file.cpp, for parallel HDF5) that includes mpi.h. Every MPI return code
// is checked and turned into a CommError carrying MPI's message, the operation and the
// group.
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
    case DType::bf16: return MPI_UINT16_T;  // reduced by the user ops below
  }
  return MPI_DATATYPE_NULL;
}

// bfloat16 <-> fp32 on the host (core/bf16.h: round to nearest even; NaN stays NaN).
float bf16_to_float(uint16_t b) { return to_float(bf16{b}); }
uint16_t float_to_bf16(float f) { return to_bf16(f).bits; }
// MPI has no bfloat16: sum and max are user ops over MPI_UINT16_T, in fp32.
extern "C" void bf16_sum(void* in, void* inout, int* len, MPI_Datatype*) {
  const auto* a = static_cast<const uint16_t*>(in);
  auto* b = static_cast<uint16_t*>(inout);
  for (int i = 0; i < *len; ++i) b[i] = float_to_bf16(bf16_to_float(a[i]) + bf16_to_float(b[i]));
}
extern "C" void bf16_max(void* in, void* inout, int* len, MPI_Datatype*) {
  const auto* a = static_cast<const uint16_t*>(in);
  auto* b = static_cast<uint16_t*>(inout);
  for (int i = 0; i < *len; ++i)
    if (bf16_to_float(a[i]) > bf16_to_float(b[i])) b[i] = a[i];
}
MPI_Op mpi_op(ReduceOp op, DType t) {
  if (t == DType::bf16) {
    static MPI_Op sum = [] { MPI_Op o; MPI_Op_create(&bf16_sum, 1, &o); return o; }();
    static MPI_Op max = [] { MPI_Op o; MPI_Op_create(&bf16_max, 1, &o); return o; }();
    return op == ReduceOp::max ? max : sum;
  }
  return op == ReduceOp::max ? MPI_MAX : MPI_SUM;
}

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
    case DType::bf16:
      for (int64_t i = 0; i < n; ++i) {
        auto& b = static_cast<uint16_t*>(data)[i];
        b = float_to_bf16(bf16_to_float(b) / static_cast<float>(size));
      }
      break;
  }
}

class MpiRequest : public Request {
 public:
  // slot: the watchdog's registration of this operation, ended on completion.
  MpiRequest(MPI_Request r, std::string what, int slot, std::function<void()> after)
      : request_(r), what_(std::move(what)), after_(std::move(after)), slot_(slot) {}
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
    const int rc = MPI_Wait(&request_, MPI_STATUS_IGNORE);
    if (rc != MPI_SUCCESS) release();
    check(rc, what_);
    finish();
  }
  bool test() override {
    if (done_) return true;
    int flag = 0;
    const int rc = MPI_Test(&request_, &flag, MPI_STATUS_IGNORE);
    if (rc != MPI_SUCCESS) release();
    check(rc, what_);
    if (flag) finish();
    return done_;
  }

 private:
  void finish() {
    done_ = true;
    release();
    if (after_) after_();
  }
  void release() {
    Watchdog::end(slot_);
    slot_ = -1;
  }
  MPI_Request request_;
  std::string what_;
  std::function<void()> after_;
  int slot_;
  bool done_ = false;
};

// The world rank of each member of `comm`.
std::vector<int> world_ranks_of(MPI_Comm comm, int size) {
  std::vector<int> mine(size), world(size);
  std::iota(mine.begin(), mine.end(), 0);
  MPI_Group group, world_group;
  MPI_Comm_group(comm, &group);
  MPI_Comm_group(MPI_COMM_WORLD, &world_group);
  MPI_Group_translate_ranks(group, size, mine.data(), world_group, world.data());
  MPI_Group_free(&group);
  MPI_Group_free(&world_group);
  return world;
}

// For the watchdog's messages: runs of 5 or more consecutive ranks become a range ("0-63").
std::string rank_list(const std::vector<int>& world) {
  std::string out;
  const int size = static_cast<int>(world.size());
  auto add = [&](int r) {
    if (!out.empty()) out += ',';
    out += std::to_string(r);
  };
  for (int i = 0; i < size;) {
    int j = i;
    while (j + 1 < size && world[j + 1] == world[j] + 1) ++j;
    if (j - i >= 4) {
      add(world[i]);
      out += '-';
      out += std::to_string(world[j]);
    } else {
      for (int k = i; k <= j; ++k) add(world[k]);
    }
    i = j + 1;
  }
  return out;
}

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
  std::vector<int> world;  // world rank of each member
  int peer_world(int peer) const {
    return peer >= 0 && peer < static_cast<int>(world.size()) ? world[peer] : peer;
  }
};

const void* MpiCommunicator::mpi_comm() const { return &impl_->comm; }

MpiCommunicator::MpiCommunicator(void* comm, bool owned, std::string name)
    : impl_(std::make_unique<Impl>()), name_(std::move(name)) {
  impl_->comm = *static_cast<MPI_Comm*>(comm);
  impl_->owned = owned;
  MPI_Comm_set_errhandler(impl_->comm, MPI_ERRORS_RETURN);
  check(MPI_Comm_rank(impl_->comm, &rank_), "MPI_Comm_rank");
  check(MPI_Comm_size(impl_->comm, &size_), "MPI_Comm_size");
  MPI_Comm_rank(MPI_COMM_WORLD, &world_rank_);
  impl_->world = world_ranks_of(impl_->comm, size_);
  watch_ = Watchdog::group(name_, rank_list(impl_->world));
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

void MpiCommunicator::barrier() {
  WatchScope watch("barrier", watch_);
  check(MPI_Barrier(impl_->comm), where("barrier"));
}

std::unique_ptr<Communicator> MpiCommunicator::split(int color, int key, const std::string& name) {
  MPI_Comm out;
  WatchScope watch("split", watch_);
  check(MPI_Comm_split(impl_->comm, color, key, &out), where("split"));
  return std::make_unique<MpiCommunicator>(&out, true, name);
}

void MpiCommunicator::abort(int code) {
  MPI_Abort(MPI_COMM_WORLD, code);
  std::_Exit(code);
}

void MpiCommunicator::all_reduce_raw(void* data, int64_t n, DType t, ReduceOp op) {
  WatchScope watch("all_reduce", watch_);
  check(MPI_Allreduce(MPI_IN_PLACE, data, to_int(n, "all_reduce"), mpi_type(t), mpi_op(op, t), impl_->comm),
        where("all_reduce"));
  if (op == ReduceOp::avg) scale_avg(data, n, t, size_);
}

std::unique_ptr<Request> MpiCommunicator::iall_reduce_raw(void* data, int64_t n, DType t, ReduceOp op) {
  MPI_Request r;
  check(MPI_Iallreduce(MPI_IN_PLACE, data, to_int(n, "all_reduce"), mpi_type(t), mpi_op(op, t), impl_->comm, &r),
        where("all_reduce"));
  const int size = size_;
  return std::make_unique<MpiRequest>(r, where("all_reduce"), Watchdog::begin("all_reduce", watch_), [=] {
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
  check(MPI_Ireduce_scatter(send, recv, icounts->data(), mpi_type(t), mpi_op(op, t), impl_->comm, &r),
        where("reduce_scatter"));
  const int64_t mine = counts[rank_];
  const int size = size_;
  return std::make_unique<MpiRequest>(r, where("reduce_scatter"), Watchdog::begin("reduce_scatter", watch_), [=] {
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
  return std::make_unique<MpiRequest>(r, where("all_gather"), Watchdog::begin("all_gather", watch_),
                                      [icounts, displs] {});
}

void MpiCommunicator::broadcast_raw(void* data, int64_t n, DType t, int root) {
  WatchScope watch("broadcast", watch_);
  check(MPI_Bcast(data, to_int(n, "broadcast"), mpi_type(t), root, impl_->comm), where("broadcast"));
}

void MpiCommunicator::send_raw(const void* data, int64_t n, DType t, int peer, int tag) {
  WatchScope watch("send", watch_, impl_->peer_world(peer));
  check(MPI_Send(data, to_int(n, "send"), mpi_type(t), peer, tag, impl_->comm),
        where("send") + " to rank " + std::to_string(peer));
}

std::unique_ptr<Request> MpiCommunicator::isend_raw(const void* data, int64_t n, DType t, int peer, int tag) {
  MPI_Request r;
  const std::string what = where("send") + " to rank " + std::to_string(peer);
  check(MPI_Isend(data, to_int(n, "send"), mpi_type(t), peer, tag, impl_->comm, &r), what);
  return std::make_unique<MpiRequest>(r, what, Watchdog::begin("send", watch_, impl_->peer_world(peer)),
                                      [] {});
}

void MpiCommunicator::recv_raw(void* data, int64_t n, DType t, int peer, int tag) {
  WatchScope watch("recv", watch_, impl_->peer_world(peer));
  check(MPI_Recv(data, to_int(n, "recv"), mpi_type(t), peer, tag, impl_->comm, MPI_STATUS_IGNORE),
        where("recv") + " from rank " + std::to_string(peer));
}

}  // namespace kumiko::comm
#endif  // KUMIKO_WITH_MPI
