#pragma once
// What this CPU's vector units offer kumiko's kernels, as the CPU reports it (x86:
// cpuid; aarch64: the kernel's hwcaps and the SVE vector length). kumiko bench and the
// CPU backend's bf16 log line name it.
#include <string>

namespace kumiko {

struct CpuFeatures {
  std::string arch;        // "x86-64", "aarch64" or "other"
  std::string vector;      // e.g. "AVX-512", "AVX2+FMA", "SVE 512-bit", "NEON"
  bool bf16_dot = false;   // bf16 dot products: AVX512-BF16 (x86) or the BF16 extension (aarch64)
  bool bf16_tiles = false; // AMX-BF16 tiles (x86)
  std::string describe() const;  // one line, e.g. "x86-64 AVX-512, AVX512-BF16, AMX-BF16"
};

CpuFeatures cpu_features();

}  // namespace kumiko
