// kumiko::gpu in a build without the CUDA backend (nvcc was not found when kumiko
// was configured): the same functions, saying so.
#include "kumiko/core/error.h"
#include "kumiko/gpu/bench.h"
#include "kumiko/gpu/engine.h"

namespace kumiko::gpu {

namespace {
constexpr const char* kNoCuda =
    "this kumiko was built without the CUDA backend (nvcc was not found when it was configured; install the CUDA "
    "toolkit and rebuild, or use backend.device = cpu)";
}

std::unique_ptr<parallel::Engine> make_cuda_engine(const parallel::EngineSetup&) {
  throw UserError(std::string("backend.device = cuda: ") + kNoCuda);
}

int run_kernel_benchmarks(const KernelBenchOptions&) {
  throw UserError(std::string("kumiko bench kernels: ") + kNoCuda);
}

bool cuda_built() { return false; }

std::string device_name() { return ""; }

size_t free_device_memory() { return 0; }

int visible_devices() { return 0; }

}  // namespace kumiko::gpu
