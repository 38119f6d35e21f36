#!/bin/bash
# test_slurm_requeue.sh BUILD_DIR SOURCE_DIR
#
# End-to-end preemption test on a real (local, single-machine) Slurm cluster:
#   1. start a private cluster with scripts/slurm-local.sh in a temp dir (stopped on exit);
#   2. run the trainer uninterrupted with mpirun, 2 ranks (the reference);
#   3. sbatch jobs/fashion-mnist.sbatch with the same settings, wait for progress, preempt it
#      with `scancel --signal=USR1 --full`;
#   4. check it checkpointed (exit 75), requeued itself (Restarts=1), resumed from its checkpoint
#      and COMPLETED;
#   5. rn-ckpt-diff the final checkpoints of both runs: they must be bitwise identical.
# Nothing is skipped: a missing piece is a failure with a message saying what is missing.
# Must run as root (the local cluster's daemons). Exit 0 on success.
#
# Everything that depends on the trainer's interface is in the block below; each value can
# also be overridden from the environment (e.g. RN_TEST_BUILD=/tmp/fake to use a stand-in).
set -u
set -o pipefail

if [ $# -ne 2 ]; then
  echo "usage: $0 BUILD_DIR SOURCE_DIR" >&2
  exit 2
fi
BUILD=$(cd "$1" 2>/dev/null && pwd -P) || { echo "FAIL: build dir $1 does not exist" >&2; exit 1; }
SRC=$(cd "$2" 2>/dev/null && pwd -P) || { echo "FAIL: source dir $2 does not exist" >&2; exit 1; }

# ---------------------------------------------------------------- adjustable (trainer contract)
TRAIN_BUILD=${RN_TEST_BUILD:-$BUILD}                # holds rn-train and rn-ckpt-diff
TRAINER=$TRAIN_BUILD/rn-train
CKPT_DIFF=$TRAIN_BUILD/rn-ckpt-diff                 # exit 0 iff parameters bitwise identical
PRESET=${RN_TEST_PRESET:-fashion-mnist}
# Short run, same for both runs; a metrics line every step so progress is visible early.
TRAIN_ARGS=${RN_TEST_TRAIN_ARGS:-"--steps 60 --eval-every 0 --log-every 1"}
DATA=${RN_TEST_DATA:-$SRC/datasets/fashion-mnist}
DATA_READY=train.manifest                           # $DATA is complete once this file exists
PREPARE=$SRC/scripts/prepare-fashion-mnist.sh       # PREPARE BUILD DATA creates it otherwise
CKPT_GLOB=${RN_TEST_CKPT_GLOB:-"ckpt-*.h5"}         # checkpoint files in --out (ckpt-<step>.h5)
METRICS=metrics.jsonl                               # one JSON line per logged step, in --out
PROGRESS_LINES=${RN_TEST_PROGRESS_LINES:-3}         # preempt once this many metrics lines exist
RESUMED_TEXT=${RN_TEST_RESUMED_TEXT:-"resumed from"}  # trainer log line after --resume auto
EXIT_REQUEUE=75
RANKS=2
JOB_SCRIPT=$SRC/jobs/fashion-mnist.sbatch
# ---------------------------------------------------------------- bounded waits (seconds)
WAIT_REFERENCE=${RN_TEST_WAIT_REFERENCE:-240}
WAIT_START=60          # job submitted -> RUNNING
WAIT_PROGRESS=180      # RUNNING -> PROGRESS_LINES metrics lines
WAIT_REQUEUE=120       # USR1 sent -> job requeued (Restarts >= 1)
WAIT_FINISH=${RN_TEST_WAIT_FINISH:-300}  # requeued -> COMPLETED

T0=$(date +%s)
say() { echo "[slurm-test +$(( $(date +%s) - T0 ))s] $*"; }
FAILED=0
fail() {
  FAILED=1
  echo "FAIL: $*" >&2
  exit 1
}

# A Slurm allocation around ctest must not leak into mpirun, sbatch or the daemons.
for v in $(env | sed -n 's/^\(SLURM_[A-Za-z0-9_]*\)=.*/\1/p'); do unset "$v"; done
unset SBATCH_OUTPUT SBATCH_ERROR SBATCH_OPEN_MODE SBATCH_PARTITION SBATCH_TIMELIMIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

# ---------------------------------------------------------------- pieces that must exist
[ "$(id -u)" -eq 0 ] || fail "must run as root (the test starts munged, slurmctld and slurmd)"
for p in "$TRAINER" "$CKPT_DIFF"; do
  [ -x "$p" ] || fail "$p not found or not executable (build the project first)"
done
[ -f "$SRC/scripts/slurm-local.sh" ] || fail "$SRC/scripts/slurm-local.sh missing"
[ -f "$JOB_SCRIPT" ] || fail "$JOB_SCRIPT missing"
for c in mpirun sbatch squeue scontrol scancel munged slurmctld slurmd; do
  command -v "$c" >/dev/null 2>&1 || [ -x "/usr/sbin/$c" ] ||
    fail "$c not found (scripts/install-deps.sh installs openmpi-bin, munge, slurmctld, slurmd, slurm-client)"
done

TMP=$(mktemp -d /tmp/rn-slurm-test.XXXXXX) || fail "mktemp failed"
STATE=$TMP/slurm
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  [ "$FAILED" -eq 1 ] && rc=1
  if [ -n "${J:-}" ] && [ -f "$STATE/slurm.conf" ]; then
    [ "$rc" -ne 0 ] && SLURM_CONF=$STATE/slurm.conf scontrol show job "$J" 2>/dev/null | sed 's/^/  job| /' >&2
    SLURM_CONF=$STATE/slurm.conf scancel "$J" 2>/dev/null
  fi
  if [ "$rc" -ne 0 ]; then
    for f in "$TMP/job.log" "$TMP/reference.log"; do
      [ -s "$f" ] && { echo "----- tail of $f -----" >&2; tail -n 40 "$f" >&2; }
    done
    [ -s "$STATE/log/slurmctld.log" ] && { echo "----- tail of slurmctld.log -----" >&2; tail -n 15 "$STATE/log/slurmctld.log" >&2; }
    [ -s "$STATE/log/slurmd.log" ] && { echo "----- tail of slurmd.log -----" >&2; tail -n 15 "$STATE/log/slurmd.log" >&2; }
  fi
  bash "$SRC/scripts/slurm-local.sh" stop "$STATE" >/dev/null 2>&1
  if [ "$rc" -eq 0 ] && [ -z "${RN_TEST_KEEP:-}" ]; then
    rm -rf "$TMP"
  else
    echo "test files kept in $TMP" >&2
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'fail "interrupted"' INT TERM

# ---------------------------------------------------------------- data
if [ ! -f "$DATA/$DATA_READY" ]; then
  [ -f "$PREPARE" ] || fail "dataset $DATA incomplete (no $DATA_READY) and $PREPARE not found to create it"
  say "preparing $DATA with $PREPARE $BUILD $DATA"
  sh "$PREPARE" "$BUILD" "$DATA" >"$TMP/prepare.log" 2>&1 || { tail -n 20 "$TMP/prepare.log" >&2; fail "$PREPARE failed"; }
  [ -f "$DATA/$DATA_READY" ] || fail "$PREPARE ran but $DATA/$DATA_READY still does not exist"
fi

# ---------------------------------------------------------------- cluster
say "starting local Slurm cluster in $STATE"
bash "$SRC/scripts/slurm-local.sh" start "$STATE" >"$TMP/slurm-start.log" 2>&1 ||
  { cat "$TMP/slurm-start.log" >&2; fail "scripts/slurm-local.sh start failed"; }
# shellcheck disable=SC1091
. "$STATE/env.sh"

# ---------------------------------------------------------------- reference run (no Slurm)
# shellcheck disable=SC2206
TARGS=(--preset "$PRESET" --data "$DATA" --resume auto --threads 1 $TRAIN_ARGS)
say "reference run: mpirun -n $RANKS $TRAINER ${TARGS[*]} --out $TMP/ref"
# Not inside the Slurm job, so hide the cluster from mpirun.
( unset SLURM_CONF
  exec timeout -k 10 "$WAIT_REFERENCE" mpirun --allow-run-as-root --oversubscribe --bind-to none \
    --mca mpi_yield_when_idle 1 --mca btl_vader_single_copy_mechanism none -n "$RANKS" \
    "$TRAINER" "${TARGS[@]}" --out "$TMP/ref" ) >"$TMP/reference.log" 2>&1
rc=$?
[ "$rc" -eq 124 ] && fail "reference run did not finish within ${WAIT_REFERENCE}s"
[ "$rc" -eq 0 ] || fail "reference run exited with code $rc (see $TMP/reference.log)"
T_REF=$(( $(date +%s) - T0 ))
say "reference run finished"

newest_ckpt() {
  # Newest checkpoint by name (checkpoint names sort by step), else by time.
  # shellcheck disable=SC2086
  (cd "$1" 2>/dev/null && ls -1d $CKPT_GLOB 2>/dev/null | sort | tail -n 1)
}
REF_CKPT=$(newest_ckpt "$TMP/ref")
[ -n "$REF_CKPT" ] || fail "reference run wrote no checkpoint matching '$CKPT_GLOB' in $TMP/ref"

# ---------------------------------------------------------------- the job
job_field() {  # job_field NAME -> value of NAME= in scontrol show job
  scontrol show job -o "$J" 2>/dev/null | tr ' ' '\n' | sed -n "s/^$1=//p" | head -n 1
}
job_state() { job_field JobState; }

say "submitting $JOB_SCRIPT"
J=$(cd "$TMP" && RN_ROOT=$SRC RN_BUILD=$TRAIN_BUILD RN_DATA=$DATA RN_OUT=$TMP/job \
      RN_PRESET=$PRESET RN_ARGS="$TRAIN_ARGS" RN_LAUNCHER=${RN_TEST_LAUNCHER:-srun} \
      sbatch --parsable -O --output="$TMP/job.log" "$JOB_SCRIPT" 2>"$TMP/sbatch.err") ||
  fail "sbatch failed: $(cat "$TMP/sbatch.err")"
J=${J%%;*}
[ -n "$J" ] || fail "sbatch printed no job id"
say "job $J submitted"

deadline=$(( $(date +%s) + WAIT_START ))
while :; do
  st=$(job_state)
  [ "$st" = RUNNING ] && break
  case "$st" in PENDING|CONFIGURING|"") ;; *) fail "job $J is $st before it ran (see $TMP/job.log)" ;; esac
  [ "$(date +%s)" -lt "$deadline" ] || fail "job $J not RUNNING after ${WAIT_START}s (state '$st', reason $(job_field Reason))"
  sleep 0.5
done
say "job $J running"

deadline=$(( $(date +%s) + WAIT_PROGRESS ))
while :; do
  n=0
  [ -f "$TMP/job/$METRICS" ] && n=$(wc -l <"$TMP/job/$METRICS")
  [ "$n" -ge "$PROGRESS_LINES" ] && break
  st=$(job_state)
  [ "$st" = RUNNING ] || fail "job $J is $st before it logged $PROGRESS_LINES lines in $TMP/job/$METRICS (too short a run to preempt? see $TMP/job.log)"
  [ "$(date +%s)" -lt "$deadline" ] || fail "job $J logged only $n lines in $TMP/job/$METRICS after ${WAIT_PROGRESS}s"
  sleep 0.2
done

T_SIG=$(date +%s)
say "job $J has $n metrics lines: preempting with scancel --signal=USR1 --full"
scancel --signal=USR1 --full "$J" || fail "scancel --signal=USR1 --full $J failed"

# Requeue: the job script sees exit 75 and runs scontrol requeue. Slurm then holds the job for
# AuthInfo cred_expire seconds (BeginTime). Release it with StartTime=now, but not in the same
# second as the requeue: slurmd refuses ("Job credential revoked", job FAILED) a launch whose
# credential is not newer, in whole seconds, than the revocation of the previous run.
deadline=$(( $(date +%s) + WAIT_REQUEUE ))
releases=0
last_release=0
T_REQ=
while :; do
  st=$(job_state)
  restarts=$(job_field Restarts)
  now=$(date +%s)
  if [ "${restarts:-0}" -ge 1 ] && [ -z "$T_REQ" ]; then
    T_REQ=$now
    say "job $J requeued (Restarts=$restarts, state $st)"
  fi
  if [ -n "$T_REQ" ]; then
    case "$st" in
      # Restarts is incremented while the first run is still winding down (RUNNING): the
      # restarted run is the one whose batch script logged restart=1.
      RUNNING|COMPLETED) grep -q "restart=1 " "$TMP/job.log" 2>/dev/null && break ;;
      PENDING)
        if [ $((now - T_REQ)) -ge 2 ] && [ $((now - last_release)) -ge 3 ] && [ "$releases" -lt 5 ]; then
          reason=$(job_field Reason)
          if scontrol update JobId="$J" StartTime=now 2>/dev/null; then
            releases=$((releases + 1))
            last_release=$now
            say "released pending job $J with StartTime=now (reason was $reason)"
          fi
        fi
        ;;
      COMPLETING|REQUEUED|CONFIGURING|"") ;;
      *) fail "job $J ended as $st after its requeue (see $TMP/job.log and slurmctld.log)" ;;
    esac
  else
    case "$st" in
      RUNNING|COMPLETING|PENDING|REQUEUED|"") ;;
      COMPLETED) fail "job $J COMPLETED without being requeued: the signal came too late or was ignored (see $TMP/job.log)" ;;
      *) fail "job $J ended as $st instead of requeueing (see $TMP/job.log)" ;;
    esac
  fi
  [ "$now" -lt "$deadline" ] ||
    fail "job $J not requeued and restarted within ${WAIT_REQUEUE}s of SIGUSR1 (state $st, Restarts=${restarts:-?}, reason $(job_field Reason))"
  sleep 0.2
done
T_RUN2=$(date +%s)
say "job $J running again"

deadline=$(( $(date +%s) + WAIT_FINISH ))
while :; do
  st=$(job_state)
  case "$st" in
    COMPLETED) break ;;
    RUNNING|COMPLETING|PENDING|CONFIGURING|REQUEUED) ;;
    *) fail "job $J ended as $st after the restart (see $TMP/job.log)" ;;
  esac
  [ "$(date +%s)" -lt "$deadline" ] || fail "job $J not COMPLETED within ${WAIT_FINISH}s of its restart (state $st)"
  sleep 0.5
done
T_DONE=$(date +%s)
say "job $J COMPLETED"

# ---------------------------------------------------------------- checks
restarts=$(job_field Restarts)
[ "$restarts" = 1 ] || fail "job $J has Restarts=$restarts, expected 1"
exitcode=$(job_field ExitCode)
[ "$exitcode" = 0:0 ] || fail "job $J ExitCode=$exitcode, expected 0:0"
grep -q "trainer exited with code $EXIT_REQUEUE" "$TMP/job.log" ||
  fail "job log has no 'trainer exited with code $EXIT_REQUEUE': the trainer did not checkpoint-and-exit on SIGUSR1"
grep -q "checkpointed: requeueing job $J" "$TMP/job.log" || fail "job log does not show the requeue"
grep -q "restart=1 " "$TMP/job.log" || fail "job log does not show a start with SLURM_RESTART_COUNT=1"
grep -q "$RESUMED_TEXT" "$TMP/job.log" ||
  fail "job log has no '$RESUMED_TEXT': the restarted trainer did not resume from its checkpoint"
grep -q "trainer exited with code 0" "$TMP/job.log" || fail "job log does not show a final exit code 0"

JOB_CKPT=$(newest_ckpt "$TMP/job")
[ -n "$JOB_CKPT" ] || fail "the job wrote no checkpoint matching '$CKPT_GLOB' in $TMP/job"
[ "$JOB_CKPT" = "$REF_CKPT" ] ||
  fail "final checkpoints differ in name: reference $REF_CKPT, preempted job $JOB_CKPT"
say "comparing $TMP/ref/$REF_CKPT with $TMP/job/$JOB_CKPT"
"$CKPT_DIFF" "$TMP/ref/$REF_CKPT" "$TMP/job/$JOB_CKPT" >"$TMP/ckpt-diff.log" 2>&1 || {
  cat "$TMP/ckpt-diff.log" >&2
  fail "final parameters of the preempted+resumed job differ from the uninterrupted run"
}

say "timing: reference run ${T_REF}s; SIGUSR1 -> requeued $((T_REQ - T_SIG))s -> running again $((T_RUN2 - T_REQ))s; restart -> COMPLETED $((T_DONE - T_RUN2))s; total $(( $(date +%s) - T0 ))s"
say "PASS: preempted job requeued, resumed from its checkpoint, completed, bitwise equal to the uninterrupted run"
exit 0
