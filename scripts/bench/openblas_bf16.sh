#!/usr/bin/env bash
# Builds Debian's own OpenBLAS source (0.3.21) with BUILD_BFLOAT16=1, so that
# backend.bf16_gemm = openblas (cblas_sbgemm) can be used and measured beside oneDNN:
# Debian's binary package is built without it. Nothing is installed system-wide: the
# library goes to PREFIX and is picked up through LD_LIBRARY_PATH by the kumiko
# binary as it is (kumiko looks cblas_sbgemm up at run time).
#
# Usage: scripts/bench/openblas_bf16.sh [--prefix DIR] [--target NAME]
#   --prefix  where libopenblas.so.0 goes (default /opt/openblas-bf16)
#   --target  OpenBLAS TARGET (default COOPERLAKE on a CPU with AVX512-BF16, which
#             every AMX CPU also has; other CPUs have no bf16 instructions and no
#             native sbgemm kernels, so the script stops there). Not SAPPHIRERAPIDS:
#             0.3.21's AMX sbgemm kernel loads its K-tail tiles (the odd last k, as
#             read in the source beside the fix) from the wrong offset and never asks
#             Linux for the AMX tile state (SIGILL unless something else in the
#             process did); OpenBLAS fixed both in pull request 4048 (0.3.24), after
#             the source Debian 12 ships.
# Then:  LD_LIBRARY_PATH=/opt/openblas-bf16 build/bin/kumiko bench gemm --threads 2
#        LD_LIBRARY_PATH=/opt/openblas-bf16 build/bin/kumiko train ... --backend.dtype=bf16 \
#            --backend.bf16_gemm=openblas
# The source comes from Debian (apt-get source, through a deb-src entry for the mirror
# apt already uses, which exists only while the script runs). Takes about 2 minutes on
# 2 cores. Exit 3: the source could not be downloaded (no mirror reachable); 2: any
# other error.
set -euo pipefail

PREFIX=/opt/openblas-bf16
TARGET=""
die() { echo "openblas_bf16: error: $*" >&2; exit 2; }
trap 'exit 2' ERR  # a failing command ends the script with 2, not its own status
while [[ $# -gt 0 ]]; do
  case "$1" in
    --prefix) PREFIX="${2:?--prefix needs a directory}"; shift ;;
    --target) TARGET="${2:?--target needs an OpenBLAS target name}"; shift ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
  shift
done

if [[ -z "$TARGET" ]]; then
  flags="$(grep -m1 '^flags' /proc/cpuinfo || true)"
  if [[ "$flags" == *" avx512_bf16"* ]]; then TARGET=COOPERLAKE
  else die "this CPU has no AVX512-BF16: OpenBLAS has no native sbgemm for it" \
           "(backend.bf16_gemm = emulated is what runs here); pass --target to build anyway"
  fi
fi
[[ "${TARGET^^}" != SAPPHIRERAPIDS ]] ||
  die "--target SAPPHIRERAPIDS: OpenBLAS 0.3.21's AMX sbgemm kernel reads its K-tail tiles from the wrong offset and" \
      "does not request the AMX tile state (fixed in OpenBLAS 0.3.24); COOPERLAKE's AVX512-BF16 kernels" \
      "run on AMX CPUs too (and kumiko refuses that library's sbgemm)"

[[ $(id -u) == 0 ]] || die "run as root (apt-get source and build dependencies)"
# make, a C compiler, xz for the tarball (apt-get source --download-only needs nothing more)
if ! command -v make >/dev/null || ! command -v gcc >/dev/null || ! command -v xz >/dev/null; then
  apt-get update -qq && apt-get install -y -qq build-essential xz-utils >/dev/null
fi

# The mirror (and its keyring) of the system's own Debian entry for this release:
# the first enabled deb822 stanza of type deb that lists the release itself (not
# -security), else the first one-line "deb" entry for it.
CODENAME="$(sed -n 's/^VERSION_CODENAME=//p' /etc/os-release)"
read -r MIRROR KEYRING < <(awk -v rel="$CODENAME" 'BEGIN { RS = "" }
  function field(name,   v) { if (!match($0, "(^|\n)" name ":[ \t]*[^\n]*")) return ""
    v = substr($0, RSTART, RLENGTH); sub("^\n?" name ":[ \t]*", "", v); return v }
  tolower(field("Enabled")) != "no" && (" " field("Types") " ") ~ / deb / && (" " field("Suites") " ") ~ (" " rel " ") {
    split(field("URIs"), u, /[ \t]+/); print u[1], field("Signed-By"); exit }' \
  $(ls /etc/apt/sources.list.d/*.sources 2>/dev/null | grep -v kumiko-openblas-src) </dev/null 2>/dev/null || true)
[[ -n "${MIRROR:-}" ]] || MIRROR="$(awk -v rel="$CODENAME" '$1 == "deb" {
  for (i = 2; i < NF; i++) if ($i ~ /^(https?|file):/ && $(i + 1) == rel) { print $i; exit } }' \
  /etc/apt/sources.list $(ls /etc/apt/sources.list.d/*.list 2>/dev/null) 2>/dev/null || true)"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
[[ -n "${KEYRING:-}" && "$KEYRING" == /* ]] || KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
WORK="$(mktemp -d -t openblas-bf16.XXXXXX)"
SRC_LIST=/etc/apt/sources.list.d/kumiko-openblas-src.sources
cleanup() { rm -f "$SRC_LIST"; rm -rf "$WORK"; }
trap cleanup EXIT
cat >"$SRC_LIST" <<EOF
Types: deb-src
URIs: $MIRROR
Suites: $CODENAME
Components: main
Signed-By: $KEYRING
EOF
echo "openblas_bf16: fetching Debian's OpenBLAS source from $MIRROR" >&2
# Only the source index is fetched; List-Cleanup=0 keeps the binary package indexes
# (an update restricted to one list would otherwise delete the others').
if ! apt-get update -qq -o Dir::Etc::sourcelist="$SRC_LIST" -o Dir::Etc::sourceparts=- \
       -o APT::Get::List-Cleanup=0 >/dev/null ||
   ! (cd "$WORK" && apt-get source -qq --download-only openblas >/dev/null 2>&1); then
  echo "openblas_bf16: error: apt-get source openblas failed (is $MIRROR reachable?)" >&2
  exit 3
fi
tar -C "$WORK" -xf "$WORK"/openblas_*.orig.tar.xz
SRC="$(find "$WORK" -maxdepth 1 -type d -name 'OpenBLAS-*' | head -n 1)"
[[ -n "$SRC" ]] || die "no OpenBLAS-* directory in the source package"

echo "openblas_bf16: building $(basename "$SRC") TARGET=$TARGET BUILD_BFLOAT16=1 (OpenMP) in $WORK" >&2
make -C "$SRC" -j"$(nproc)" TARGET="$TARGET" BUILD_BFLOAT16=1 USE_OPENMP=1 NUM_THREADS=256 \
  NOFORTRAN=1 NO_LAPACK=1 NO_LAPACKE=1 NO_STATIC=1 libs shared >"$WORK/build.log" 2>&1 ||
  { tail -n 30 "$WORK/build.log" >&2; die "the OpenBLAS build failed (log above)"; }
grep -q ' T cblas_sbgemm$' <(nm -D "$SRC/libopenblas.so.0") || die "the built library has no cblas_sbgemm"

mkdir -p "$PREFIX"
cp -L "$SRC/libopenblas.so.0" "$PREFIX/libopenblas.so.0"
echo "openblas_bf16: $PREFIX/libopenblas.so.0 (cblas_sbgemm, $TARGET kernels); use it with" >&2
echo "  LD_LIBRARY_PATH=$PREFIX build/bin/kumiko bench gemm --threads 2" >&2
