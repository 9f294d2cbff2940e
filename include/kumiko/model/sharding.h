#pragma once
// Logical tensors from tensor-parallel shards and back: checkpoints and weights
// files hold logical (unsharded) tensors, so any layout reads any file.
#include <vector>

#include "kumiko/comm/communicator.h"
#include "kumiko/model/transformer.h"

namespace kumiko::model {

// One logical tensor per parameter, in the store's order.
using LogicalTensors = std::vector<std::vector<float>>;

// Assembles every parameter's logical tensor from `flat`, a buffer in the store's
// flat layout (the values, a gradient or an optimizer moment), over the model's tp
// group (a collective over tp; every tp rank gets the result).
// `group` (host buffers) defaults to the model's tp group; a model whose tp group is a
// device communicator (NCCL) passes the matching host (MPI) group.
LogicalTensors gather_logical(const ParameterStore<float>& params, const Dims& dims, const PipelineStage& stage,
                              const TensorParallel& tp, const float* flat);
template <typename Model>
LogicalTensors gather_logical(const Model& model, const float* flat, comm::Communicator* group = nullptr) {
  TensorParallel tp = model.tensor_parallel();
  if (group) tp.group = group;
  return gather_logical(model.params(), model.dims(), model.pipeline_stage(), tp, flat);
}
// Writes this rank's part of each logical tensor into `flat` (store layout).
void scatter_logical(const ParameterStore<float>& params, const LogicalTensors& logical, float* flat);
inline void scatter_logical(const Transformer<float>& model, const LogicalTensors& logical, float* flat) {
  scatter_logical(model.params(), logical, flat);
}

}  // namespace kumiko::model
