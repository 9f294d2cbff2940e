# Warnings for kumiko's own targets (not for third-party code).
add_library(kumiko_warnings INTERFACE)
target_compile_options(kumiko_warnings INTERFACE
  $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wpedantic -Wshadow -Wnon-virtual-dtor -Wno-unused-parameter>)
add_library(kumiko::warnings ALIAS kumiko_warnings)

# Optimisation flags for the numeric code: vectorisation for the build machine's
# baseline ISA plus AVX2/FMA where available at run time is left to OpenBLAS;
# kumiko's own kernels use -O3 and the native ISA when KUMIKO_NATIVE is ON.
option(KUMIKO_NATIVE "Compile kumiko's CPU kernels for the build machine's ISA (-march=native)" ON)
add_library(kumiko_numeric_flags INTERFACE)
target_compile_options(kumiko_numeric_flags INTERFACE
  $<$<COMPILE_LANGUAGE:CXX>:-O3 -fno-math-errno>
  $<$<AND:$<COMPILE_LANGUAGE:CXX>,$<BOOL:${KUMIKO_NATIVE}>>:-march=native>)
