#include "kumiko/parallel/engine.h"

#include "parallel/engine_impl.h"

namespace kumiko::parallel {

std::unique_ptr<Engine> make_cpu_bf16_engine(const EngineSetup& setup);  // engine_cpu_bf16.cpp

std::unique_ptr<Engine> make_cpu_engine(const EngineSetup& setup) {
  if (setup.config && setup.config->backend.dtype == "bf16") return make_cpu_bf16_engine(setup);
  return std::make_unique<EngineImpl<backend::Cpu<float>>>(setup, std::make_unique<backend::Cpu<float>>(),
                                                           EngineComms{});
}

}  // namespace kumiko::parallel
