#include "kumiko/core/cpu_features.h"

#if defined(__x86_64__)
#include <cpuid.h>
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#endif
#elif defined(__aarch64__)
#include <sys/auxv.h>
#include <sys/prctl.h>
#endif

namespace kumiko {

std::string CpuFeatures::describe() const {
  std::string s = arch + " " + vector;
  if (bf16_dot) s += arch == "x86-64" ? ", AVX512-BF16" : ", BF16";
  if (bf16_tiles) s += tiles_unusable.empty() ? ", AMX-BF16" : ", AMX-BF16 (unusable: " + tiles_unusable + ")";
  if (!bf16_dot && !bf16_tiles) s += ", no bf16 instructions";
  return s;
}

#if defined(__x86_64__)
namespace {

// Whether this process may run AMX tile instructions on a CPU whose cpuid has them
// (the Linux kernel's x86 xstate documentation, xstate.rst): the OS must have enabled the
// tile state in XCR0 (bits 17 XTILECFG and 18 XTILEDATA), and Linux hands the tile
// data to a process only after it asks (ARCH_REQ_XCOMP_PERM). Asking twice is harmless;
// oneDNN asks the same way before it picks its AMX kernels.
std::string amx_tiles_unusable() {
  static const std::string reason = []() -> std::string {
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !((c >> 27) & 1u)) return "the OS has not enabled XSAVE";
    unsigned lo = 0, hi = 0;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    constexpr unsigned kTileState = 3u << 17;  // XTILECFG | XTILEDATA
    if ((lo & kTileState) != kTileState)
      return "the OS has not enabled the AMX tile state (XCR0; Linux 5.16 or newer enables it, a hypervisor may hide "
             "it)";
#if defined(__linux__)
    constexpr long kGetPerm = 0x1022, kReqPerm = 0x1023, kXtileData = 18;  // asm/prctl.h, XFEATURE_XTILEDATA
    unsigned long perm = 0;
    // A sandbox's seccomp filter may refuse either call, whatever the kernel.
    if (syscall(SYS_arch_prctl, kGetPerm, &perm) != 0)
      return std::string("arch_prctl ARCH_GET_XCOMP_PERM failed: ") + std::strerror(errno) +
             " (Linux before 5.16 has no such call; a sandbox may refuse it)";
    if (!(perm & (1ul << kXtileData)) && syscall(SYS_arch_prctl, kReqPerm, kXtileData) != 0)
      return std::string("this process was refused the AMX tile data (arch_prctl ARCH_REQ_XCOMP_PERM: ") +
             std::strerror(errno) + ")";
#endif
    return "";
  }();
  return reason;
}

}  // namespace
#endif

CpuFeatures cpu_features() {
  CpuFeatures f;
#if defined(__x86_64__)
  f.arch = "x86-64";
  unsigned a = 0, b = 0, c = 0, d = 0;
  bool avx2 = false, fma = false, avx512 = false;
  if (__get_cpuid(1, &a, &b, &c, &d)) fma = (c >> 12) & 1u;
  if (__get_cpuid_count(7, 0, &a, &b, &c, &d)) {
    avx2 = (b >> 5) & 1u;
    avx512 = (b >> 16) & 1u;     // AVX-512F
    f.bf16_tiles = (d >> 22) & 1u;  // AMX-BF16
    const unsigned max_sub = a;
    if (max_sub >= 1 && __get_cpuid_count(7, 1, &a, &b, &c, &d)) f.bf16_dot = (a >> 5) & 1u;  // AVX512_BF16
  }
  f.vector = avx512 ? "AVX-512" : avx2 && fma ? "AVX2+FMA" : avx2 ? "AVX2" : "SSE";
  if (f.bf16_tiles) f.tiles_unusable = amx_tiles_unusable();
#elif defined(__aarch64__)
  f.arch = "aarch64";
  const unsigned long hw = getauxval(AT_HWCAP), hw2 = getauxval(AT_HWCAP2);
  constexpr unsigned long kSve = 1ul << 22, kSve2 = 1ul << 1, kBf16 = 1ul << 14;  // HWCAP_SVE, HWCAP2_SVE2, HWCAP2_BF16
  if (hw & kSve) {
    const int vl = prctl(PR_SVE_GET_VL);
    f.vector = std::string(hw2 & kSve2 ? "SVE2 " : "SVE ") + (vl > 0 ? std::to_string((vl & 0xffff) * 8) : "?") +
               "-bit";
  } else {
    f.vector = "NEON";
  }
  f.bf16_dot = hw2 & kBf16;
#else
  f.arch = "other";
  f.vector = "unknown";
#endif
  return f;
}

}  // namespace kumiko
