#pragma once
// bf16 <-> fp32 over flat arrays (kernels/cpu/bf16.cpp): OpenMP-parallel loops the
// compiler vectorises; rounding to nearest even (core/bf16.h).
#include <cstdint>

#include "kumiko/core/bf16.h"

namespace kumiko::cpu {

void widen(float* dst, const bf16* src, int64_t n);   // dst = float(src)
void narrow(bf16* dst, const float* src, int64_t n);  // dst = bf16(src)

}  // namespace kumiko::cpu
