#!/usr/bin/env bash
# Builds, on this (Debian) machine, what gpu_check.sh runs on a GPU machine that has
# CUDA, PyTorch and Python but none of the Debian libraries, and packs it into
# .device/kumiko-device.tar.xz (git-ignored; name .device in the device tool's
# `carry`; about 25 MB at bc93c22, the tool carries at most 64 MiB):
#   bin/  kumiko, kernels_cuda_test, gpu_model_test, test_gpu_layouts (sm_90, stripped)
#   lib/  the Debian shared libraries they link (HDF5, SentencePiece, spdlog, fmt,
#         OpenBLAS, OpenMP, libstdc++ ...), not the CUDA ones: the GPU machine has
#         its own cudart, cuBLASLt, cuDNN and NCCL.
# The build is single-process (KUMIKO_MPI=OFF): the check runs on one GPU.
# Usage: scripts/device/build_for_device.sh   (then scripts/device/gpu_check.sh there)
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ -x /usr/local/cuda/bin/nvcc ]; then export PATH="/usr/local/cuda/bin:$PATH"; fi
command -v nvcc >/dev/null || { echo "build_for_device: nvcc not found (install the CUDA toolkit)" >&2; exit 2; }
cmake -S . -B build-device -G Ninja -DCMAKE_BUILD_TYPE=Release -DKUMIKO_MPI=OFF -DKUMIKO_CUDA=ON \
  -DCMAKE_CUDA_ARCHITECTURES=90 >/dev/null
cmake --build build-device -j "${KUMIKO_JOBS:-$(nproc)}" --target kumiko kernels_cuda_test gpu_model_test test_gpu_layouts \
  kernels_cpu_test test_cpu_bf16
STAGE=build-device/stage
rm -rf "$STAGE" .device && mkdir -p "$STAGE/bin" "$STAGE/lib" .device
cp build-device/bin/kumiko build-device/bin/kernels_cuda_test build-device/bin/gpu_model_test \
  build-device/bin/test_gpu_layouts build-device/bin/kernels_cpu_test build-device/bin/test_cpu_bf16 "$STAGE/bin/"
strip "$STAGE"/bin/*
# Shared libraries: everything ldd resolves except glibc's own and CUDA's.
ldd "$STAGE"/bin/* | awk '/=> \// {print $3}' | sort -u | while read -r lib; do
  case "$(basename "$lib")" in
    libc.so*|libm.so*|libpthread.so*|libdl.so*|librt.so*|ld-linux*|libresolv.so*) ;;
    libcuda.so*|libcudart.so*|libcublas*|libcudnn*|libnccl*|libnvrtc*|libnvJitLink*) ;;
    *) cp -L "$lib" "$STAGE/lib/" ;;
  esac
done
echo "packing (xz, about a minute)..."
tar -C "$STAGE" -cf - bin lib | xz -9 -T"${KUMIKO_JOBS:-$(nproc)}" > .device/kumiko-device.tar.xz
# The commit, marked when the tree had changes (then the binaries are not that commit).
rev=$(git rev-parse HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD -- 2>/dev/null || rev="$rev+uncommitted"
echo "$rev" > .device/commit
du -sh .device/kumiko-device.tar.xz
echo "ready: carry .device and run scripts/device/gpu_check.sh on the GPU machine"
