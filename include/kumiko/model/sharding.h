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
LogicalTensors gather_logical(const Transformer<float>& model, const float* flat);

// Writes this rank's part of each logical tensor into `flat` (store layout).
void scatter_logical(const Transformer<float>& model, const LogicalTensors& logical, float* flat);

}  // namespace kumiko::model
