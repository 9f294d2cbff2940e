#pragma once
// The CUDA engine: parallel/engine.h's one engine template over the CUDA backend
// (src/gpu/cuda_backend.h), fp32 or bf16 mixed precision, any dp x tp x pp x zero
// layout the CPU runs. This header has no CUDA types: the trainer includes it in
// every build; without CUDA the functions say the backend is missing.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "kumiko/gpu/options.h"
#include "kumiko/model/transformer.h"
#include "kumiko/parallel/engine.h"

namespace kumiko::gpu {

// Selects the GPU (node-local rank % visible devices) and builds the engine.
// backend.comm = nccl: NCCL communicators over the grid's groups (one GPU per
// rank); mpi: the grid's MPI groups, host-staged (ranks may share a GPU); auto:
// nccl when this node has at least as many GPUs as ranks. Throws UserError for an
// unsupported option or when the GPU memory does not suffice.
std::unique_ptr<parallel::Engine> make_cuda_engine(const parallel::EngineSetup& setup);

// The current device's name as the driver reports it ("" without CUDA) and its free
// memory in bytes (0 without CUDA or devices): the trainer's pre-flight check and MFU peak.
std::string device_name();
size_t free_device_memory();

// True when this build has the CUDA backend (kumiko was configured with nvcc).
bool cuda_built();
// Devices visible: 0 without the CUDA backend or without devices, -1 when the CUDA
// driver cannot be initialised (no driver, or one too old for this build).
int visible_devices();

}  // namespace kumiko::gpu
