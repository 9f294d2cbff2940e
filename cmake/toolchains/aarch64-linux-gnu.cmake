# Cross build for aarch64 Linux (A64FX, Grace, Graviton ...) from an x86-64 Debian
# machine: Debian's cross compiler (g++-aarch64-linux-gnu) and an arm64 Debian root
# holding kumiko's libraries (made by scripts/cross/aarch64.sh with mmdebstrap).
#   cmake -S . -B build-aarch64 -DCMAKE_TOOLCHAIN_FILE=cmake/toolchains/aarch64-linux-gnu.cmake \
#         -DKUMIKO_SYSROOT=/opt/kumiko-arm64 -DKUMIKO_MARCH=armv8.2-a+sve
# Test programs run under qemu-user (CMAKE_CROSSCOMPILING_EMULATOR, and binfmt_misc for
# the programs tests start themselves); QEMU_CPU chooses the emulated CPU.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)

set(KUMIKO_SYSROOT "$ENV{KUMIKO_SYSROOT}" CACHE PATH "arm64 Debian root with kumiko's libraries")
if(NOT KUMIKO_SYSROOT)
  set(KUMIKO_SYSROOT /opt/kumiko-arm64 CACHE PATH "arm64 Debian root with kumiko's libraries" FORCE)
endif()
if(NOT EXISTS "${KUMIKO_SYSROOT}/usr/lib/aarch64-linux-gnu")
  message(FATAL_ERROR "KUMIKO_SYSROOT=${KUMIKO_SYSROOT} is not an arm64 Debian root "
                      "(make one with scripts/cross/aarch64.sh)")
endif()
# Try-compiles (and the variables they read) see the same root.
list(APPEND CMAKE_TRY_COMPILE_PLATFORM_VARIABLES KUMIKO_SYSROOT)

set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)
set(CMAKE_SYSROOT "${KUMIKO_SYSROOT}")
set(CMAKE_LIBRARY_ARCHITECTURE aarch64-linux-gnu)
set(CMAKE_FIND_ROOT_PATH "${KUMIKO_SYSROOT}")
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)

# pkg-config (SentencePiece, OpenBLAS) reads the root's .pc files and prefixes their paths.
set(ENV{PKG_CONFIG_SYSROOT_DIR} "${KUMIKO_SYSROOT}")
set(ENV{PKG_CONFIG_LIBDIR}
    "${KUMIKO_SYSROOT}/usr/lib/aarch64-linux-gnu/pkgconfig:${KUMIKO_SYSROOT}/usr/share/pkgconfig")
set(ENV{PKG_CONFIG_PATH} "")

# Open MPI and parallel HDF5 without running their (arm64) compiler wrappers: the
# root's Debian layout, given directly.
set(_lib "${KUMIKO_SYSROOT}/usr/lib/aarch64-linux-gnu")
set(MPI_C_COMPILER "" CACHE FILEPATH "")
set(MPI_CXX_COMPILER "" CACHE FILEPATH "")
set(MPI_C_HEADER_DIR "${_lib}/openmpi/include" CACHE PATH "")
set(MPI_CXX_HEADER_DIR "${_lib}/openmpi/include" CACHE PATH "")
set(MPI_C_LIB_NAMES mpi CACHE STRING "")
set(MPI_CXX_LIB_NAMES mpi CACHE STRING "")
set(MPI_mpi_LIBRARY "${_lib}/libmpi.so" CACHE FILEPATH "")
set(HDF5_C_COMPILER_EXECUTABLE "" CACHE FILEPATH "")
set(HDF5_C_INCLUDE_DIR "${KUMIKO_SYSROOT}/usr/include/hdf5/openmpi" CACHE PATH "")
set(HDF5_hdf5_LIBRARY_RELEASE "${_lib}/hdf5/openmpi/libhdf5.so" CACHE FILEPATH "")

# Test programs (and gtest's test discovery) run under qemu-user with the root's loader
# and libraries.
find_program(KUMIKO_QEMU_AARCH64 NAMES qemu-aarch64-static qemu-aarch64 REQUIRED)
set(CMAKE_CROSSCOMPILING_EMULATOR "${KUMIKO_QEMU_AARCH64};-L;${KUMIKO_SYSROOT}")
