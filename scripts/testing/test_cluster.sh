#!/usr/bin/env bash
# test_cluster.sh: a small cluster of "hosts" on one Linux machine, for multi-node
# tests (the project's copy of /work/shared/tools/netns-cluster). Each host is a
# network namespace with its own address on a private bridge that has no uplink, so
# traffic never leaves the machine; Open MPI starts its daemons in them through this
# script (as its rsh agent) instead of ssh, so ranks on different hosts talk over TCP
# between distinct addresses. Needs root and iproute2.
#
#   test_cluster.sh up N          create hosts ${NC_PREFIX}1..N (addresses $NC_NET.11..)
#   test_cluster.sh down          kill what runs in them, remove them and the bridge
#   test_cluster.sh mpirun ARGS   mpirun from host 1 across all hosts; pass -np and the
#                                 program; slots per host: NC_SLOTS (default 2)
#   test_cluster.sh cut K|heal K  take host K's link down / up (fault injection)
#   test_cluster.sh exec K CMD    run CMD inside host K
#   test_cluster.sh pids K        the ids of the processes running inside host K
#   test_cluster.sh check         exit 0 if namespaces can be created here, else 1
#   test_cluster.sh agent HOST CMD   (used by mpirun as its rsh agent)
#
# Environment: NC_PREFIX (default kmk-h; keep it <= 8 characters: interface names are
# ${NC_PREFIX}br, ${NC_PREFIX}v1, ...) and NC_NET (default 10.77.0, a /24 inside 10/8).
# Give every concurrent run its own of both, e.g. NC_PREFIX=kt$$ NC_NET=10.77.$(($$ % 200)).
# A test must call `down` on every exit path (trap ... EXIT).
#
# Open MPI 4.1 here needs `--mca routed direct` (set below): with the default radix
# routing the daemons started through the agent fail with an internal error.
set -euo pipefail
P=${NC_PREFIX:-kmk-h}
BR=${NC_BRIDGE:-${P}br}
NET=${NC_NET:-10.77.0}
self=$(readlink -f "$0")
case "$NET" in 10.*) ;; *) echo "test_cluster.sh: NC_NET must be a 10.x.y prefix, got $NET" >&2; exit 2 ;; esac

hosts() { ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^${P}[0-9]+$" | sort -V || true; }

case "${1:-}" in
  check)
    probe="${P}probe"
    ip netns add "$probe" 2>/dev/null || exit 1
    ip netns del "$probe"; exit 0 ;;
  up)
    n=${2:?usage: test_cluster.sh up N}
    ip link show "$BR" >/dev/null 2>&1 || { ip link add "$BR" type bridge; ip link set "$BR" up; }
    for i in $(seq 1 "$n"); do
      h=$P$i
      ip netns list | awk '{print $1}' | grep -qx "$h" && continue
      ip netns add "$h"
      ip link add "${P}v$i" type veth peer name "${P}p$i"
      ip link set "${P}p$i" netns "$h"
      ip link set "${P}v$i" master "$BR"; ip link set "${P}v$i" up
      ip netns exec "$h" ip addr add "$NET.$((10 + i))/24" dev "${P}p$i"
      ip netns exec "$h" ip link set "${P}p$i" up
      ip netns exec "$h" ip link set lo up
    done
    hosts ;;
  down)
    for h in $(hosts); do
      # Only processes inside our own namespaces (the daemons and ranks we started).
      for pid in $(ip netns pids "$h" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
    done
    sleep 0.2
    for h in $(hosts); do ip netns del "$h" 2>/dev/null || true; done
    ip link del "$BR" 2>/dev/null || true ;;
  mpirun)
    shift
    list=$(hosts | sed "s/\$/:${NC_SLOTS:-2}/" | paste -sd,)
    [ -n "$list" ] || { echo "test_cluster.sh: no hosts; run 'test_cluster.sh up N' first" >&2; exit 2; }
    first=$(hosts | head -n1)
    exec ip netns exec "$first" env OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 \
      mpirun --host "$list" --mca plm_rsh_agent "$self agent" --mca routed direct \
      --mca oob_tcp_if_include "$NET.0/24" --mca btl tcp,self --mca btl_tcp_if_include "$NET.0/24" "$@" ;;
  agent)
    shift; h=$1; shift
    exec ip netns exec "$h" sh -c "$*" ;;
  cut)  ip netns exec "$P${2:?host number}" ip link set "${P}p$2" down ;;
  heal) ip netns exec "$P${2:?host number}" ip link set "${P}p$2" up ;;
  exec) k=${2:?host number}; shift 2; exec ip netns exec "$P$k" "$@" ;;
  pids) ip netns pids "$P${2:?host number}" ;;
  *) sed -n '2,21p' "$self"; exit 2 ;;
esac
