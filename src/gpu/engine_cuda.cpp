// The CUDA engine: the one model, data-parallel layer and pipeline runner
// (src/model/transformer_impl.h, src/parallel/*_impl.h) instantiated over the CUDA
// backend, in fp32 and bf16.
#include "kumiko/gpu/engine.h"

#include <cuda_runtime.h>

#include <string>

#include "gpu/cuda_backend.h"
#include "kumiko/comm/nccl.h"
#include "model/transformer_impl.h"
#include "parallel/data_parallel_impl.h"
#include "parallel/engine_impl.h"
#include "parallel/pipeline_impl.h"

namespace kumiko {

namespace backend {

template <typename T>
std::string Cuda<T>::describe() const {
  int dev = 0;
  cudaGetDevice(&dev);
  return detail::concat(cuda::device_description(dev), ", dtype ", kBf16 ? "bf16" : "fp32", ", matmul ", opt_.matmul,
                        ", attention ", opt_.attention, ", ", device_bytes() / 1048576.0, " MiB of device memory");
}

}  // namespace backend

namespace model {
template class BasicTransformer<backend::Cuda<float>>;
template class BasicTransformer<backend::Cuda<cuda::bf16>>;
}  // namespace model

namespace parallel {
template class BasicDataParallel<backend::Cuda<float>>;
template class BasicDataParallel<backend::Cuda<cuda::bf16>>;
template class BasicPipelineRunner<backend::Cuda<float>>;
template class BasicPipelineRunner<backend::Cuda<cuda::bf16>>;
}  // namespace parallel

namespace gpu {

namespace {

// backend.comm: NCCL communicators over the grid's groups, or none (host-staged MPI).
parallel::EngineComms make_comms(const parallel::EngineSetup& s, int devices) {
  const auto& cfg = *s.config;
  std::string mode = cfg.backend.comm;
  const int local_ranks = comm::local_size_from_launcher();
  if (mode == "auto") mode = local_ranks <= devices ? "nccl" : "mpi";
  KUMIKO_USER_CHECK(mode != "nccl" || local_ranks <= devices, "backend.comm = nccl needs a GPU per rank: ",
                    local_ranks, " ranks on this node, ", devices,
                    " GPUs visible (NCCL refuses two ranks on one GPU); use backend.comm = mpi or auto");
  parallel::EngineComms c;
  if (mode != "nccl" || s.grid->world().size() == 1) return c;
  auto nccl = [&](comm::Communicator& host, const char* name) -> comm::Communicator* {
    c.owned.push_back(comm::make_nccl(host, name));
    return c.owned.back().get();
  };
  auto& grid = *s.grid;
  if (grid.tp() > 1) c.tp = nccl(grid.tp_group(), "tp-nccl");
  if (grid.dp() > 1) c.dp = nccl(grid.dp_group(), "dp-nccl");
  if (grid.pp() > 1) c.pp = nccl(grid.pp_group(), "pp-nccl");
  if (s.embed_group) c.embed = nccl(*s.embed_group, "embed-nccl");
  return c;
}

template <typename T>
std::unique_ptr<parallel::Engine> make(const parallel::EngineSetup& s, const GpuOptions& o, int devices) {
  auto be = std::make_unique<backend::Cuda<T>>(o);
  return std::make_unique<parallel::EngineImpl<backend::Cuda<T>>>(s, std::move(be), make_comms(s, devices));
}

}  // namespace

std::unique_ptr<parallel::Engine> make_cuda_engine(const parallel::EngineSetup& s) {
  const auto& cfg = *s.config;
  const int n = cuda::require_devices("backend.device = cuda", "; check nvidia-smi, or use backend.device = cpu");
  KUMIKO_CUDA_CHECK(cudaSetDevice(comm::local_rank_from_launcher() % n));
  KUMIKO_USER_CHECK(cfg.backend.dtype == "fp32" || cfg.backend.dtype == "bf16", "backend.dtype: '", cfg.backend.dtype,
                    "' (expected fp32 or bf16)");
  const GpuOptions o{cfg.backend.dtype, cfg.backend.matmul, cfg.backend.attention};
  if (o.dtype == "bf16") return make<cuda::bf16>(s, o, n);
  return make<float>(s, o, n);
}

// kumiko plan sizes the bf16 backend with a two-byte stand-in (src/plan/memory.cpp).
static_assert(sizeof(cuda::bf16) == 2, "kumiko plan assumes two-byte bf16 activations");

bool cuda_built() { return true; }

std::string device_name() {
  int dev = 0;
  cudaDeviceProp prop{};
  if (cuda::device_count() <= 0 || cudaGetDevice(&dev) != cudaSuccess ||
      cudaGetDeviceProperties(&prop, dev) != cudaSuccess)
    return "";
  return prop.name;
}

size_t free_device_memory() {
  // The device this rank will train on (make_cuda_engine selects the same one).
  size_t free_bytes = 0, total = 0;
  const int n = cuda::device_count();
  if (n <= 0 || cudaSetDevice(comm::local_rank_from_launcher() % n) != cudaSuccess ||
      cudaMemGetInfo(&free_bytes, &total) != cudaSuccess)
    return 0;
  return free_bytes;
}

int visible_devices() { return cuda::device_count(); }

}  // namespace gpu

}  // namespace kumiko
