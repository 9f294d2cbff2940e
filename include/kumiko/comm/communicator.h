#pragma once
// Communicator: the one small abstract class through which ranks exchange tensors
// (ARCHITECTURE.md). Implementations: MPI (src/comm/mpi_communicator.cpp, host
// buffers), local (one rank), and later NCCL (device buffers). Training code never
// sees an MPI or NCCL type.
//
// Every operation is collective over the ranks of this communicator unless noted
// (send/recv). Failures of the underlying library become kumiko::CommError with the
// library's own message, the operation and the group.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kumiko/core/bf16.h"
#include "kumiko/core/error.h"

namespace kumiko::comm {

class CommError : public Error {
 public:
  using Error::Error;
};

enum class ReduceOp { sum, avg, max };
enum class DType { f32, f64, i32, i64, bf16 };

// bfloat16 as the communicator sees it (core/bf16.h: the CPU backend's bf16 tensors,
// and the CUDA backend's, passed as these bits): NCCL reduces it natively, MPI through
// kumiko's own reduction ops (sum in fp32, rounded to nearest even; max).
using BFloat16 = kumiko::bf16;

template <typename T>
constexpr DType dtype_of();
template <>
constexpr DType dtype_of<float>() { return DType::f32; }
template <>
constexpr DType dtype_of<double>() { return DType::f64; }
template <>
constexpr DType dtype_of<int32_t>() { return DType::i32; }
template <>
constexpr DType dtype_of<int64_t>() { return DType::i64; }
template <>
constexpr DType dtype_of<BFloat16>() { return DType::bf16; }
size_t dtype_bytes(DType t);

// A non-blocking operation in flight. wait() completes it (idempotent).
class Request {
 public:
  virtual ~Request() = default;
  virtual void wait() = 0;
  virtual bool test() = 0;  // true once complete
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual const std::string& name() const = 0;  // e.g. "world", "dp", "tp"
  // Host rank of this process in the launcher's world (for messages).
  virtual int world_rank() const = 0;

  // In place: data[n] becomes the reduction over all ranks.
  template <typename T>
  void all_reduce(T* data, int64_t n, ReduceOp op) { all_reduce_raw(data, n, dtype_of<T>(), op); }
  template <typename T>
  std::unique_ptr<Request> iall_reduce(T* data, int64_t n, ReduceOp op) {
    return iall_reduce_raw(data, n, dtype_of<T>(), op);
  }
  // send holds sum(counts) elements; rank r receives the reduction of its block
  // (counts[r] elements, blocks in rank order) into recv. Uneven counts allowed.
  template <typename T>
  void reduce_scatter(const T* send, T* recv, const std::vector<int64_t>& counts, ReduceOp op) {
    ireduce_scatter_raw(send, recv, counts, dtype_of<T>(), op)->wait();
  }
  template <typename T>
  std::unique_ptr<Request> ireduce_scatter(const T* send, T* recv, const std::vector<int64_t>& counts,
                                           ReduceOp op) {
    return ireduce_scatter_raw(send, recv, counts, dtype_of<T>(), op);
  }
  // In place: rank r's block (counts[r] elements at offset sum(counts[0..r))) of
  // `data` is gathered to every rank.
  template <typename T>
  void all_gather(T* data, const std::vector<int64_t>& counts) {
    iall_gather_raw(data, counts, dtype_of<T>())->wait();
  }
  template <typename T>
  std::unique_ptr<Request> iall_gather(T* data, const std::vector<int64_t>& counts) {
    return iall_gather_raw(data, counts, dtype_of<T>());
  }
  template <typename T>
  void broadcast(T* data, int64_t n, int root) { broadcast_raw(data, n, dtype_of<T>(), root); }
  template <typename T>
  void send(const T* data, int64_t n, int peer, int tag = 0) { send_raw(data, n, dtype_of<T>(), peer, tag); }
  template <typename T>
  void recv(T* data, int64_t n, int peer, int tag = 0) { recv_raw(data, n, dtype_of<T>(), peer, tag); }
  // Non-blocking send: `data` must stay unchanged until the request completes.
  template <typename T>
  std::unique_ptr<Request> isend(const T* data, int64_t n, int peer, int tag = 0) {
    return isend_raw(data, n, dtype_of<T>(), peer, tag);
  }

  virtual void barrier() = 0;
  // A device communicator (NCCL) queues its operations on this CUDA stream
  // (a cudaStream_t) and takes device buffers; nullptr for host communicators (MPI,
  // local), whose buffers are host memory. Backends order work against it with events.
  virtual void* device_stream() { return nullptr; }
  // A pointer to this group's MPI_Comm when it is an MPI communicator (for MPI-IO:
  // parallel HDF5 checkpoints), else nullptr.
  virtual const void* mpi_comm() const { return nullptr; }
  // Ranks with the same color form a new communicator, ordered by key.
  virtual std::unique_ptr<Communicator> split(int color, int key, const std::string& name) = 0;
  // Ends the whole job (every rank of the launcher's world) with `code`.
  [[noreturn]] virtual void abort(int code) = 0;

 protected:
  virtual void all_reduce_raw(void* data, int64_t n, DType t, ReduceOp op) = 0;
  virtual std::unique_ptr<Request> iall_reduce_raw(void* data, int64_t n, DType t, ReduceOp op) = 0;
  virtual std::unique_ptr<Request> ireduce_scatter_raw(const void* send, void* recv,
                                                       const std::vector<int64_t>& counts, DType t,
                                                       ReduceOp op) = 0;
  virtual std::unique_ptr<Request> iall_gather_raw(void* data, const std::vector<int64_t>& counts,
                                                   DType t) = 0;
  virtual void broadcast_raw(void* data, int64_t n, DType t, int root) = 0;
  virtual void send_raw(const void* data, int64_t n, DType t, int peer, int tag) = 0;
  virtual void recv_raw(void* data, int64_t n, DType t, int peer, int tag) = 0;
  virtual std::unique_ptr<Request> isend_raw(const void* data, int64_t n, DType t, int peer, int tag) = 0;
};

// The communicator of a one-process run (every collective is a copy or a no-op).
std::unique_ptr<Communicator> make_local();

// The world communicator of the launcher: MPI when kumiko was built with MPI and
// started by mpirun/srun (initializing MPI on first call), local otherwise.
// finalize_world() ends MPI at exit.
Communicator& world();
void finalize_world();
bool mpi_available();
// Whether the MPI library can take device (CUDA) buffers directly; when it cannot,
// GPU tensors go through NCCL or are staged through host memory.
bool mpi_cuda_aware();
// Whether MPI runs with MPI_THREAD_MULTIPLE (several threads may call it at once, as
// a background checkpoint write beside training does).
bool mpi_thread_multiple();
// The MPI library's name and version (first line of MPI_Get_library_version).
std::string mpi_library_version();

}  // namespace kumiko::comm
