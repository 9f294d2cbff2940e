#!/usr/bin/env bash
# multinode.sh CASE KUMIKO SRC WORK: tests across 2 "hosts" (network namespaces, 2 ranks
# each, TCP between them) built by scripts/testing/test_cluster.sh. CASE is one of
#   layouts    per-step losses of dp=4 (ZeRO-1) across hosts = one process within 1e-5
#              relative; then dp=2 x tp=2 (tp groups inside a host) and dp=2 x pp=2 (the
#              pipeline stages on different hosts)
#   cut        cut host 2's link mid-training (comm_timeout_s=5, a checkpoint every 4
#              steps): every rank exits non-zero within 15 s, the log names the stalled
#              operation, the newest checkpoint verifies, one process resumes from it
#   stop_kill  SIGSTOP of one rank, then (a new job) kill -9 of one rank: the job ends
#              non-zero within 15 s; the watchdog's line names the operation (after kill
#              -9 Open MPI may end the job first: either is accepted, the bound is not)
set -uo pipefail
CASE="$1"; KUMIKO="$2"; SRC="$3"; WORK="$4"
CLUSTER="$SRC/scripts/testing/test_cluster.sh"
[ "$(id -u)" -eq 0 ] || { echo "SKIP: multinode tests need root (network namespaces)"; exit 77; }
command -v ip >/dev/null || { echo "SKIP: iproute2 (ip) not installed"; exit 77; }
export NC_PREFIX="km$(($$ % 100000))" NC_NET="10.78.$(($$ % 250))" NC_SLOTS=2
"$CLUSTER" check || { echo "SKIP: 'ip netns add' is refused here (no CAP_SYS_ADMIN?)"; exit 77; }
rm -rf "$WORK"; mkdir -p "$WORK"; cd "$SRC"
trap '"$CLUSTER" down' EXIT
"$CLUSTER" up 2 >/dev/null || { echo "FAIL: could not create the namespaces"; exit 1; }
export OMP_NUM_THREADS=1
TIMEOUT=5
BOUND=$((TIMEOUT + 10))
tiny=(--config configs/tiny.ini --data.synthetic=true --model.n_layers=2 --model.d_model=64 --model.d_ff=256
      --model.vocab_size=512 --model.max_seq_len=64 --data.seq_len=64 --train.global_batch=8
      --train.micro_batch=2 --train.warmup_steps=2 --backend.threads=1 --train.eval_every=0 --log.every_steps=1)
fail=0
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }

# compare A B: same steps, losses within 1e-5 relative
compare() { python3 "$SRC/tests/support/metrics.py" compare "$1" "$2" --tol 1e-5; }

# rank_pid HOST RANK: the pid of that rank (a kumiko process inside the host's namespace)
rank_pid() {
  for pid in $("$CLUSTER" pids "$1"); do
    # grep -z on the file itself: `tr | grep -q` under pipefail fails whenever grep
    # exits before tr has written all of a large environment (SIGPIPE).
    grep -qzx "OMPI_COMM_WORLD_RANK=$2" "/proc/$pid/environ" 2>/dev/null &&
      [ "$(readlink -f "/proc/$pid/exe" 2>/dev/null)" = "$KUMIKO_EXE" ] && { echo "$pid"; return; }
  done
}

# ranks_alive: the ranks of ours still running in a host (a stopped one counts), "host:pid"
KUMIKO_EXE=$(readlink -f "$KUMIKO")
ranks_alive() {
  for h in 1 2; do
    for pid in $("$CLUSTER" pids "$h"); do
      [ "$(readlink -f "/proc/$pid/exe" 2>/dev/null)" = "$KUMIKO_EXE" ] &&
        [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ] && echo "$h:$pid"
    done
  done
}

# start NAME ARGS...: a 4-rank job in the background (launcher pid in $launcher)
start() {
  local name="$1"; shift
  "$CLUSTER" mpirun -np 4 -x OMP_NUM_THREADS "$KUMIKO" train "${tiny[@]}" --log.run_dir="$WORK/$name" "$@" \
    > "$WORK/$name.txt" 2>&1 &
  launcher=$!
}

# wait_step NAME N: until metrics.jsonl has step N (30 s at most, less if the launcher ends)
wait_step() {
  for _ in $(seq 1 300); do
    grep -q "\"step\":$2," "$WORK/$1/metrics.jsonl" 2>/dev/null && return 0
    kill -0 "$launcher" 2>/dev/null || break
    sleep 0.1
  done
  return 1
}

# launch NAME N ARGS...: start, then wait for step N. Open MPI's daemon start-up over the
# namespaces occasionally fails right after a previous cluster was torn down ("ORTE does
# not know how to route a message"); then the job is started once more.
launch() {
  local name="$1" n="$2"; shift 2
  for attempt in 1 2 3; do
    start "$name" "$@"
    wait_step "$name" "$n" && return 0
    kill -9 "$launcher" 2>/dev/null; wait "$launcher" 2>/dev/null
    if [ $attempt -lt 3 ] && grep -q "ORTE" "$WORK/$name.txt"; then
      echo "$name: Open MPI start-up failed ($(grep -m1 -E 'ORTE|connection back' "$WORK/$name.txt" | sed 's/^ *//')); again"
      "$CLUSTER" down; "$CLUSTER" up 2 >/dev/null; rm -rf "${WORK:?}/$name"; continue
    fi
    break
  done
  echo "FAIL: $name did not reach step $n"; tail -n 20 "$WORK/$name.txt"; return 1
}

# ends_within NAME T0: waits until no rank of ours runs (BOUND s after T0 at most);
# sets elapsed (ms) and code (the launcher's exit code, or "hung")
ends_within() {
  local name="$1" t0="$2"
  while [ -n "$(ranks_alive)" ] && [ $(( $(now_ms) - t0 )) -le $((BOUND * 1000 + 5000)) ]; do sleep 0.1; done
  elapsed=$(( $(now_ms) - t0 ))
  left=$(ranks_alive | paste -sd' ')
  [ -z "$left" ] || echo "$name: ranks still running (host:pid): $left"
  # The launcher may wait on an unreachable daemon: give it a moment, then end it.
  for _ in $(seq 1 30); do kill -0 "$launcher" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$launcher" 2>/dev/null; then
    echo "$name: mpirun still waiting (daemon unreachable) after the ranks ended; killing it"
    kill -9 "$launcher" 2>/dev/null
  fi
  wait "$launcher"; code=$?
  echo "$name: every rank ended after ${elapsed} ms; mpirun exit code $code"
  [ "$elapsed" -le $((BOUND * 1000)) ] || { echo "FAIL $name: ranks ran ${elapsed} ms > ${BOUND} s"; fail=1; }
  [ "$code" -ne 0 ] || { echo "FAIL $name: exit code 0"; fail=1; }
}

watchdog_line() {  # NAME: the watchdog's message names the operation, group and ranks
  if grep -Eq "has not completed after [0-9.]+ s .*ending the job \(exit 77\)" "$WORK/$1.txt"; then
    grep -E "has not completed" "$WORK/$1.txt" | head -n 2
    grep -Eq "step [0-9]+: (all_reduce|reduce_scatter|all_gather|broadcast|barrier|send|recv)[a-z ]* on group '[a-z]+' \(world ranks [0-9,-]+\)" \
      "$WORK/$1.txt" || { echo "FAIL $1: watchdog line without operation/group/ranks"; fail=1; }
    return 0
  fi
  return 1
}

# run_to_end NAME ARGS...: a 4-rank job in the foreground (2 minutes at most), started
# again (up to 3 times) when Open MPI's start-up over the namespaces fails as above.
run_to_end() {
  local name="$1"; shift
  for attempt in 1 2 3; do
    timeout 120 "$CLUSTER" mpirun -np 4 -x OMP_NUM_THREADS "$KUMIKO" train "${tiny[@]}" \
      --log.run_dir="$WORK/$name" "$@" > "$WORK/$name.txt" 2>&1 && return 0
    local code=$?
    if [ $attempt -lt 3 ] && grep -q "ORTE" "$WORK/$name.txt" && [ ! -s "$WORK/$name/metrics.jsonl" ]; then
      echo "$name: Open MPI start-up failed; again"
      "$CLUSTER" down; "$CLUSTER" up 2 >/dev/null; rm -rf "${WORK:?}/$name"; continue
    fi
    return $code
  done
}

case "$CASE" in
  layouts)
    "$KUMIKO" train "${tiny[@]}" --train.steps=8 --log.run_dir="$WORK/one" --checkpoint.every_steps=0 \
      > "$WORK/one.txt" 2>&1 || { echo "FAIL: one-process run"; tail "$WORK/one.txt"; exit 1; }
    run_to_end dp4 --train.steps=8 --parallel.dp=4 --parallel.zero=1 --checkpoint.every_steps=0 ||
      { echo "FAIL: dp=4 across 2 hosts"; tail -n 20 "$WORK/dp4.txt"; exit 1; }
    grep -q "4 ranks over" "$WORK/dp4.txt" || true
    echo "dp=4 zero=1 on 2 hosts vs one process:"
    compare "$WORK/one/metrics.jsonl" "$WORK/dp4/metrics.jsonl" || { echo "FAIL: dp=4 losses differ"; fail=1; }
    # dp=2 x tp=2, each tp group (consecutive ranks) inside one host.
    run_to_end dp2tp2 --train.steps=8 --parallel.dp=2 --parallel.tp=2 --checkpoint.every_steps=0; tpcode=$?
    if [ $tpcode -ne 0 ]; then
      echo "FAIL: dp=2 x tp=2 across 2 hosts, exit code $tpcode"; tail -n 20 "$WORK/dp2tp2.txt"; fail=1
    else
      echo "dp=2 x tp=2 on 2 hosts vs one process:"
      compare "$WORK/one/metrics.jsonl" "$WORK/dp2tp2/metrics.jsonl" || { echo "FAIL: dp2 x tp2 losses differ"; fail=1; }
    fi
    # dp=2 x pp=2: the two pipeline stages on different hosts (ranks 0,1 | 2,3).
    run_to_end dp2pp2 --train.steps=8 --parallel.dp=2 --parallel.pp=2 --checkpoint.every_steps=0 ||
      { echo "FAIL: dp=2 x pp=2 across 2 hosts"; tail -n 20 "$WORK/dp2pp2.txt"; fail=1; }
    if [ -s "$WORK/dp2pp2/metrics.jsonl" ]; then
      echo "dp=2 x pp=2 (stages on different hosts) vs one process:"
      compare "$WORK/one/metrics.jsonl" "$WORK/dp2pp2/metrics.jsonl" || { echo "FAIL: dp2 x pp2 losses differ"; fail=1; }
    fi ;;
  cut)
    # Cut right after step 9 (checkpoints every 4 steps): the save of step 8 is committed
    # and the next one (step 12) is steps away, so the cut lands in training collectives.
    launch cut 9 --parallel.dp=4 --parallel.zero=1 --train.steps=100000 --parallel.comm_timeout_s=$TIMEOUT \
      --checkpoint.every_steps=4 --checkpoint.keep_last=0 || exit 1
    "$CLUSTER" cut 2; t0=$(now_ms)
    echo "cut host 2's link"
    ends_within cut "$t0"
    watchdog_line cut || { echo "FAIL cut: no watchdog line"; tail -n 30 "$WORK/cut.txt"; fail=1; }
    latest=$(cat "$WORK/cut/checkpoints/latest")
    "$KUMIKO" ckpt verify "$WORK/cut/checkpoints/$latest" || { echo "FAIL cut: $latest does not verify"; fail=1; }
    step=$((10#$(echo "$latest" | sed 's/step_\([0-9]*\)\.h5/\1/')))
    "$KUMIKO" train "${tiny[@]}" --log.run_dir="$WORK/cut" --train.steps=$((step + 2)) --checkpoint.every_steps=0 \
      --checkpoint.resume=auto > "$WORK/resume.txt" 2>&1 || { echo "FAIL cut: resume"; tail "$WORK/resume.txt"; fail=1; }
    grep "resumed from" "$WORK/resume.txt" | head -n 1
    grep -q "resumed from .*$latest at step $step" "$WORK/resume.txt" || { echo "FAIL cut: no resume from $latest"; fail=1; } ;;
  stop_kill)
    for how in STOP KILL; do
      name=sig$how
      launch $name 4 --parallel.dp=4 --train.steps=100000 --parallel.comm_timeout_s=$TIMEOUT \
        --checkpoint.every_steps=0 || exit 1
      pid=$(rank_pid 2 3)
      [ -n "$pid" ] || { echo "FAIL $name: rank 3 not found in host 2"; exit 1; }
      kill -$how "$pid"; t0=$(now_ms)
      echo "$name: SIG$how to rank 3 (pid $pid, host 2)"
      ends_within $name "$t0"
      if ! watchdog_line $name; then
        if [ $how = KILL ] && grep -Eqi "exited on signal|killed|terminated|ORTE|mpirun" "$WORK/$name.txt"; then
          echo "$name: Open MPI ended the job before the watchdog: $(grep -m1 -Ei 'exited on signal|killed' "$WORK/$name.txt")"
        else
          echo "FAIL $name: no watchdog line"; tail -n 30 "$WORK/$name.txt"; fail=1
        fi
      fi
      kill -CONT "$pid" 2>/dev/null; kill -9 "$pid" 2>/dev/null
    done ;;
  *) echo "unknown case $CASE"; exit 2 ;;
esac
[ $fail -eq 0 ] && echo "PASS $CASE"
exit $fail
