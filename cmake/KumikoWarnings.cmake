# Warnings for kumiko's own targets (not for third-party code).
add_library(kumiko_warnings INTERFACE)
target_compile_options(kumiko_warnings INTERFACE
  $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wpedantic -Wshadow -Wnon-virtual-dtor -Wno-unused-parameter>)
add_library(kumiko::warnings ALIAS kumiko_warnings)

# Optimisation flags for the numeric code: vectorisation for the build machine's
# baseline ISA plus AVX2/FMA where available at run time is left to OpenBLAS;
# kumiko's own kernels use -O3 and the native ISA when KUMIKO_NATIVE is ON, or the ISA
# KUMIKO_MARCH names (a cross build: armv8.2-a+sve for A64FX, armv9-a+sve2 for Grace /
# Neoverse V2, armv8-a for any aarch64; scripts/cross/aarch64.sh).
if(CMAKE_CROSSCOMPILING)
  set(_kumiko_native_default OFF)
else()
  set(_kumiko_native_default ON)
endif()
option(KUMIKO_NATIVE "Compile kumiko's CPU kernels for the build machine's ISA (-march=native)"
       ${_kumiko_native_default})
set(KUMIKO_MARCH "" CACHE STRING
    "-march for kumiko's CPU kernels instead of native (e.g. armv8.2-a+sve, armv9-a+sve2, x86-64-v3)")
if(KUMIKO_MARCH)
  set(_kumiko_isa_flag -march=${KUMIKO_MARCH})
elseif(KUMIKO_NATIVE)
  set(_kumiko_isa_flag -march=native)
else()
  set(_kumiko_isa_flag "")
endif()
message(STATUS "kumiko: CPU kernels for ${CMAKE_SYSTEM_PROCESSOR} ${_kumiko_isa_flag}")
add_library(kumiko_numeric_flags INTERFACE)
target_compile_options(kumiko_numeric_flags INTERFACE
  $<$<COMPILE_LANGUAGE:CXX>:-O3 -fno-math-errno ${_kumiko_isa_flag}>)

# Sanitizers for a debugging build of the CPU code (scripts/testing/sanitize.sh):
# -DKUMIKO_SANITIZE=address,undefined instruments every C/C++ object kumiko builds,
# its tests included; a finding aborts the test instead of printing and going on.
# CUDA objects are left uninstrumented (nvcc's host compiler flags are not touched).
set(KUMIKO_SANITIZE "" CACHE STRING
    "Comma-separated -fsanitize= list for kumiko's C/C++ code (e.g. address,undefined); empty = off")
if(KUMIKO_SANITIZE)
  message(STATUS "kumiko: sanitizers ${KUMIKO_SANITIZE}")
  add_compile_options($<$<COMPILE_LANGUAGE:C,CXX>:-fsanitize=${KUMIKO_SANITIZE}>
                      $<$<COMPILE_LANGUAGE:C,CXX>:-fno-sanitize-recover=all>
                      $<$<COMPILE_LANGUAGE:C,CXX>:-fno-omit-frame-pointer>)
  add_link_options(-fsanitize=${KUMIKO_SANITIZE})
endif()
