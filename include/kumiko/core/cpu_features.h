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
  bool bf16_tiles = false; // AMX-BF16 tiles (x86), as cpuid reports them
  // Why this process cannot use the AMX tiles cpuid reports, "" when it can (or there
  // are none): the OS has not enabled their state in XCR0 (Linux before 5.16, or a
  // hypervisor that hides it), or this process was refused the tile data (arch_prctl
  // ARCH_REQ_XCOMP_PERM, which oneDNN asks for too; a sandbox's seccomp filter may
  // refuse it). oneDNN then runs its AVX512-BF16 kernels.
  std::string tiles_unusable;
  // One line, e.g. "x86-64 AVX-512, AVX512-BF16, AMX-BF16" (with the reason in
  // parentheses after AMX-BF16 when it is unusable).
  std::string describe() const;
};

CpuFeatures cpu_features();

}  // namespace kumiko
