// The CPU engine in bf16 (backend.dtype = bf16 on backend.device = cpu): the one model,
// data-parallel layer and pipeline runner instantiated over backend::CpuBf16
// (include/kumiko/backend/cpu_bf16.h), the same code the fp32 CPU and CUDA engines run.
#include "kumiko/backend/cpu_bf16.h"
#include "kumiko/parallel/engine.h"
#include "model/transformer_impl.h"
#include "parallel/data_parallel_impl.h"
#include "parallel/engine_impl.h"
#include "parallel/pipeline_impl.h"

namespace kumiko {

namespace model {
template class BasicTransformer<backend::CpuBf16>;
}  // namespace model

namespace parallel {
template class BasicDataParallel<backend::CpuBf16>;
template class BasicPipelineRunner<backend::CpuBf16>;

cpu::Bf16Gemm bf16_gemm_of(const config::Config* cfg) {
  const std::string name = cfg ? cfg->backend.bf16_gemm : "auto";
  return name == "auto" ? cpu::bf16_gemm_default() : cpu::bf16_gemm_from_name(name);
}

std::unique_ptr<Engine> make_cpu_bf16_engine(const EngineSetup& setup) {
  const bool pack = setup.config && setup.config->backend.packed_weights;
  auto be = std::make_unique<backend::CpuBf16>(bf16_gemm_of(setup.config), setup.dims.D, pack);
  be->set_sharded_updates(setup.config && setup.config->parallel.zero == 1);
  return std::make_unique<EngineImpl<backend::CpuBf16>>(setup, std::move(be), EngineComms{});
}
}  // namespace parallel

}  // namespace kumiko
