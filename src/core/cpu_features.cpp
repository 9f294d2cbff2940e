#include "kumiko/core/cpu_features.h"

#if defined(__x86_64__)
#include <cpuid.h>
#elif defined(__aarch64__)
#include <sys/auxv.h>
#include <sys/prctl.h>
#endif

namespace kumiko {

std::string CpuFeatures::describe() const {
  std::string s = arch + " " + vector;
  if (bf16_dot) s += arch == "x86-64" ? ", AVX512-BF16" : ", BF16";
  if (bf16_tiles) s += ", AMX-BF16";
  if (!bf16_dot && !bf16_tiles) s += ", no bf16 instructions";
  return s;
}

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
