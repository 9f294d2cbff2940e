#!/usr/bin/env bash
# Cross-builds kumiko's CPU backend for aarch64 on this x86-64 Debian machine and runs
# its CPU test suite under qemu-user, once per SVE vector length (docs/testing.md,
# "aarch64 under emulation").
#
#   scripts/cross/aarch64.sh                 A64FX ISA, tests at SVE 512 and 128 bits
#   scripts/cross/aarch64.sh --isa grace     armv9-a+sve2 (Neoverse V2)
#   scripts/cross/aarch64.sh --isa armv8     plain armv8-a (NEON only; one test run)
#   scripts/cross/aarch64.sh --vl 512        one vector length
#   scripts/cross/aarch64.sh --build-only    cross-build, no tests
#   scripts/cross/aarch64.sh --all           every CPU test, not the emulation subset
#   scripts/cross/aarch64.sh --ci            as .ci/run: the subset at 512 bits, and at 128
#                                            bits without the 4- and 8-rank layout tests
#   scripts/cross/aarch64.sh -- -R comm      extra ctest arguments after --
#
# What it sets up (idempotent; root, or sudo):
#   host packages  g++-aarch64-linux-gnu, qemu-user-static, mmdebstrap (+ install_deps.sh)
#   arm64 root     $KUMIKO_SYSROOT (default /opt/kumiko-arm64): Debian bookworm arm64 with
#                  kumiko's libraries (OpenBLAS, Open MPI, parallel HDF5, SentencePiece,
#                  spdlog, CLI11, nlohmann-json, GoogleTest), made by mmdebstrap; the
#                  compiler's --sysroot and qemu's library prefix. Multiarch (:arm64
#                  packages on this root) is not used: Debian's libhdf5-openmpi-dev and
#                  libopenmpi-dev cannot be installed for two architectures at once.
#   binfmt_misc    qemu-aarch64 registered, so that tests can start aarch64 programs
#                  (kumiko, mpirun's ranks) like native ones
# Build: build-aarch64-<isa>/ (toolchain cmake/toolchains/aarch64-linux-gnu.cmake).
# Tests (the emulation subset): every ctest entry except the labels gpu (no GPU),
# multinode (network namespaces and Slurm daemons), plan (kumiko plan's timing
# validation: timings under emulation say nothing), io (a 2 x 2.15 GB checkpoint
# dataset) and slow (the convergence runs: about 20 minutes emulated). --all runs those
# too. Measured on a 2-core AMD EPYC: 236 tests, 11 minutes per vector length (before
# the 19 integration tests that an unanchored "io" had left out: 83 s more at 512 bits).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)

isa=a64fx
vls=""
build_only=0
all=0
ci=0
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --isa) isa="${2:?--isa needs a64fx, grace or armv8}"; shift 2 ;;
    --vl) vls="${2:?--vl needs bits, e.g. 512 or 128,512}"; vls="${vls//,/ }"; shift 2 ;;
    --build-only) build_only=1; shift ;;
    --all) all=1; shift ;;
    --ci) ci=1; shift ;;
    --) shift; extra=("$@"); break ;;
    *) echo "aarch64.sh: unknown argument '$1' (see the usage at the top of $0)" >&2; exit 2 ;;
  esac
done
case "$isa" in
  a64fx) march=armv8.2-a+sve; sve=1 ;;    # Fujitsu A64FX (Fugaku): 512-bit SVE
  grace) march=armv9-a+sve2; sve=1 ;;     # NVIDIA Grace, Neoverse V2: 128-bit SVE2
  armv8) march=armv8-a; sve=0 ;;          # any aarch64 (NEON)
  *) echo "aarch64.sh: --isa '$isa' unknown (expected a64fx, grace or armv8)" >&2; exit 2 ;;
esac
if [ -z "$vls" ]; then
  if [ "$sve" = 1 ]; then vls="512 128"; else vls="none"; fi
fi
for vl in $vls; do
  case "$vl" in
    128|256|512|1024|2048|none) ;;
    *) echo "aarch64.sh: --vl '$vl' is not an SVE vector length (128, 256, 512, 1024 or 2048 bits)" >&2; exit 2 ;;
  esac
  if [ "$vl" != none ] && [ "$sve" = 0 ]; then
    echo "aarch64.sh: --isa armv8 has no SVE; --vl does not apply" >&2; exit 2
  fi
done

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
start=$SECONDS
log() { printf '[aarch64 %4ds] %s\n' $((SECONDS - start)) "$*"; }

# ---- host packages ------------------------------------------------------------------
scripts/install_deps.sh
# arch-test: mmdebstrap checks with it that this machine can run arm64 programs (a
# Recommends of mmdebstrap, so --no-install-recommends leaves it out).
HOST_PACKAGES=(g++-aarch64-linux-gnu binutils-aarch64-linux-gnu qemu-user-static mmdebstrap arch-test)
missing=()
for p in "${HOST_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# ---- binfmt_misc: aarch64 programs start through qemu ---------------------------------
BINFMT=/proc/sys/fs/binfmt_misc
if [ ! -e "$BINFMT/qemu-aarch64" ]; then
  [ -e "$BINFMT/register" ] || $SUDO mount -t binfmt_misc binfmt_misc "$BINFMT" 2>/dev/null || true
  if [ -e "$BINFMT/register" ]; then
    $SUDO sh -c "cat /usr/lib/binfmt.d/qemu-aarch64.conf > $BINFMT/register" || true
  fi
fi

# ---- the arm64 root -----------------------------------------------------------------
SYSROOT="${KUMIKO_SYSROOT:-/opt/kumiko-arm64}"
ROOT_PACKAGES=(libc6-dev libstdc++-12-dev libopenblas-openmp-dev libopenmpi-dev openmpi-bin
               libhdf5-openmpi-dev libsentencepiece-dev libspdlog-dev libcli11-dev
               nlohmann-json3-dev libgtest-dev)
stamp="bookworm ${ROOT_PACKAGES[*]}"
if [ "$(cat "$SYSROOT/.kumiko-sysroot" 2>/dev/null)" != "$stamp" ]; then
  log "making the arm64 root $SYSROOT (mmdebstrap, about 3 minutes)"
  tmp="$SYSROOT.partial"
  # A run cut off inside mmdebstrap can leave its /dev mounts there: unmount, then remove.
  for m in $(findmnt -rn -o TARGET | grep "^$tmp/" | sort -r); do $SUDO umount -l "$m" || true; done
  $SUDO rm -rf "$tmp"
  # essential: Debian's Essential packages plus ours, configured inside the root through
  # binfmt (alternatives such as libopenblas.so.0 and mpirun are set up by dpkg).
  $SUDO mmdebstrap --quiet --variant=essential --arch=arm64 --mode=root \
    --include="$(IFS=,; echo "${ROOT_PACKAGES[*]}")" bookworm "$tmp" http://deb.debian.org/debian
  # Absolute links (/etc/alternatives/..., /lib/...) become relative, so that they
  # resolve inside the root when the cross linker and qemu read it from outside.
  $SUDO python3 - "$tmp" <<'EOF'
import os, sys
root = sys.argv[1]
for d, dirs, files in os.walk(root):
    for name in dirs + files:
        p = os.path.join(d, name)
        if os.path.islink(p) and os.readlink(p).startswith('/'):
            t = os.readlink(p)
            os.unlink(p)
            os.symlink(os.path.relpath(root + t, d), p)
EOF
  echo "$stamp" | $SUDO tee "$tmp/.kumiko-sysroot" >/dev/null
  $SUDO rm -rf "$SYSROOT"
  $SUDO mv "$tmp" "$SYSROOT"
fi

# ---- build --------------------------------------------------------------------------
BUILD="build-aarch64-$isa"
mkdir -p "$BUILD"
log "building $BUILD (-march=$march)"
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DKUMIKO_CUDA=OFF \
  -DCMAKE_TOOLCHAIN_FILE="$ROOT/cmake/toolchains/aarch64-linux-gnu.cmake" \
  -DKUMIKO_SYSROOT="$SYSROOT" -DKUMIKO_MARCH="$march" >"$BUILD/configure.log" 2>&1 ||
  { cat "$BUILD/configure.log" >&2; exit 1; }
cmake --build "$BUILD" -j "${KUMIKO_JOBS:-$(nproc)}"
file -b "$BUILD/bin/kumiko" | cut -d, -f1-2
if [ "$sve" = 1 ]; then
  # SVE instructions (z registers) in kumiko's own kernels: the auto-vectorised loops.
  n=$(aarch64-linux-gnu-objdump -d "$BUILD/lib/libkumiko_kernels_cpu.a" | grep -cE '\sz[0-9]+\.[bhsd]' || true)
  log "SVE instructions in libkumiko_kernels_cpu.a: $n"
  [ "$n" -gt 0 ] || { echo "aarch64.sh: no SVE instruction in the kernels built for $march" >&2; exit 1; }
fi
[ "$build_only" = 1 ] && { log "built (no tests: --build-only)"; exit 0; }
if [ ! -e "$BINFMT/qemu-aarch64" ]; then
  # Exit 3: built, tests not run (.ci/run says so and goes on).
  echo "aarch64.sh: built, but the tests cannot run: qemu-aarch64 is not registered with" \
       "binfmt_misc ($BINFMT), and the tests start aarch64 programs themselves (kumiko," \
       "mpirun's ranks). Run as root where binfmt_misc can be mounted." >&2
  exit 3
fi

# ---- tests under qemu -----------------------------------------------------------------
labels=(-LE "gpu|multinode|plan|^io$|slow")  # regular expressions: "io" alone matches "integration"
[ "$all" = 1 ] && labels=(-LE gpu)
export QEMU_LD_PREFIX="$SYSROOT"          # qemu's loader and library prefix for binfmt starts
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# The ranks' own Open MPI is the arm64 one under $SYSROOT; mpirun is the host's (same
# version, 4.1.4), which starts them through binfmt.
probe="$BUILD/sve_probe"
if [ "$sve" = 1 ]; then
  printf '%s\n' '#include <cstdio>' '#include <sys/prctl.h>' \
    'int main() { int vl = prctl(PR_SVE_GET_VL); std::printf("%d\n", vl < 0 ? -1 : (vl & 0xffff) * 8); }' |
    aarch64-linux-gnu-g++ --sysroot="$SYSROOT" -x c++ - -o "$probe"
fi
rc=0
summary=()
for vl in $vls; do
  if [ "$vl" = none ]; then
    export QEMU_CPU=cortex-a72      # armv8-a with NEON, no SVE
  else
    export QEMU_CPU="max,sve-default-vector-length=$((vl / 8))"
    seen=$("$probe")
    [ "$seen" = "$vl" ] || { echo "aarch64.sh: QEMU_CPU=$QEMU_CPU gave an SVE vector length of $seen bits, not $vl" >&2; exit 1; }
  fi
  log "ctest under qemu-aarch64, QEMU_CPU=$QEMU_CPU"
  t0=$SECONDS
  narrow=()
  # --ci: the second width without the 4- and 8-rank layout tests (7 of its 11 minutes);
  # the 2-rank layouts (recompute, stragglers) and the communicator tests stay.
  if [ "$ci" = 1 ] && [ "$vl" != "${vls%% *}" ]; then
    narrow=(-E "test_(dp|tp|pp|eval|hf)_layouts|test_parallel_ckpt")
  fi
  set +e
  pushd "$BUILD" >/dev/null
  ctest --output-on-failure --timeout 1200 "${labels[@]}" "${narrow[@]}" "${extra[@]}" 2>&1 |
    tee "ctest-vl$vl.log"
  r=${PIPESTATUS[0]}
  popd >/dev/null
  set -e
  line=$(grep -E "tests passed" "$BUILD/ctest-vl$vl.log" || echo "no result")
  summary+=("isa $isa (-march=$march), SVE $vl${narrow:+ (--ci: 4/8-rank layouts left out)}: $line, $((SECONDS - t0)) s")
  [ "$r" = 0 ] || rc=1
done
printf '%s\n' "${summary[@]}"
log "done (exit $rc)"
exit $rc
