#include "kumiko/parallel/data_parallel.h"

#include "parallel/data_parallel_impl.h"

namespace kumiko::parallel {

template class BasicDataParallel<backend::Cpu<float>>;

}  // namespace kumiko::parallel
