#include "kumiko/parallel/data_parallel.h"

#include "parallel/data_parallel_impl.h"

namespace kumiko::parallel {

template class BasicDataParallel<backend::Cpu<float>>;
template class BasicDataParallel<backend::Cpu<double>>;  // the parity test's double run

}  // namespace kumiko::parallel
