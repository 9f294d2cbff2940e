#!/usr/bin/env bash
# Installs the Debian packages kumiko needs to build, test and run. Idempotent:
# packages already present are skipped without touching apt.
#   scripts/install_deps.sh           build and run (the demo)
#   scripts/install_deps.sh --tests   also what only the test suite uses: Slurm's
#                                     daemons and client, for the train.sbatch test on a
#                                     two-node Slurm cluster built on this machine
set -euo pipefail

PACKAGES=(
  build-essential cmake ninja-build ccache pkg-config git
  libopenmpi-dev openmpi-bin
  libhdf5-dev libhdf5-openmpi-dev   # serial (KUMIKO_MPI=OFF) and parallel (MPI-IO checkpoints)
  libspdlog-dev libcli11-dev nlohmann-json3-dev
  libsentencepiece-dev
  libgtest-dev
  libopenblas-openmp-dev
  libdnnl-dev
  iproute2 procps python3   # test scripts: network namespaces, pgrep, metrics comparison
)
case "${1:-}" in
  --tests) PACKAGES+=(slurmctld slurmd slurm-client) ;;  # tests/distributed/slurm
  "") ;;
  *) echo "install_deps: unknown option '$1' (expected --tests or nothing)" >&2; exit 2 ;;
esac

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install_deps: all ${#PACKAGES[@]} packages present"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "install_deps: installing ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
