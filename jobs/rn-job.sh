# rn-job.sh: shared body of the jobs/*.sbatch scripts. Sourced (bash), never run directly.
#
# Launches $RN_BUILD/rn-train inside the Slurm allocation, forwards preemption signals that
# reach the batch shell to the trainer, and requeues the job when the trainer reports
# "checkpointed, requeue me" (exit code 75). See docs/SLURM.md.
#
# The sbatch script sets RN_PRESET (and optionally RN_DEFAULT_DATA / RN_DEFAULT_OUT) and calls
# rn_job_main. Everything else comes from the environment (sbatch exports it by default):
#   RN_ROOT      source tree (default: found from this file's location)
#   RN_BUILD     build dir holding rn-train            (default $RN_ROOT/build)
#   RN_DATA      dataset dir              (default $RN_ROOT/$RN_DEFAULT_DATA or datasets/<job>)
#   RN_OUT       output dir: checkpoints, metrics.jsonl (default $RN_ROOT/checkpoints/<job>)
#   RN_ARGS      extra trainer options, word-split     (default empty)
#   RN_LAUNCHER  srun (default: srun --mpi=pmix) or mpirun (Open MPI's mpirun in the allocation)
#   RN_THREADS   threads per rank (default $SLURM_CPUS_PER_TASK, else 1)
#   GOMP_SPINCOUNT  OpenMP spin before sleeping (default 20000 here; see docs/PERF.md)
#   RN_MAX_RESTARTS  stop requeueing after this many restarts (default 1000)

RN_EXIT_REQUEUE=75

rn_log() { echo "[rn-job $(date '+%F %T') job ${SLURM_JOB_ID:-?}] $*"; }

# Signal handling: whatever arrives at the batch shell (USR1 from --signal=B:USR1@T or
# scancel --signal=USR1, TERM from scancel/preemption/time limit) is forwarded to the launcher
# as SIGUSR1, so the trainer checkpoints either way; only USR1 leads to a requeue. srun and Open MPI's mpirun both relay SIGUSR1 to every rank (SIGTERM would make
# them tear the step down instead of letting the ranks checkpoint).
RN_CHILD=
RN_SIGNALLED=
rn_forward() {
  RN_SIGNALLED="${RN_SIGNALLED:+$RN_SIGNALLED }$1"
  if [ -n "$RN_CHILD" ] && kill -0 "$RN_CHILD" 2>/dev/null; then
    rn_log "SIG$1 at the batch shell: forwarding SIGUSR1 to the launcher (pid $RN_CHILD)"
    kill -USR1 "$RN_CHILD" 2>/dev/null
  else
    rn_log "SIG$1 at the batch shell (no trainer running)"
  fi
}

# Waits for $RN_CHILD to exit, through any number of trapped signals; sets RN_RC.
rn_wait_child() {
  local rc again
  while :; do
    wait "$RN_CHILD"
    rc=$?
    [ "$rc" -gt 128 ] || break
    # Either a trapped signal interrupted wait (the child is alive) or the child died of one.
    if kill -0 "$RN_CHILD" 2>/dev/null; then
      continue
    fi
    wait "$RN_CHILD" 2>/dev/null
    again=$?
    [ "$again" -ne 127 ] && rc=$again
    break
  done
  RN_RC=$rc
}

rn_find_root() {
  if [ -n "${RN_ROOT:-}" ]; then return 0; fi
  local here
  here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
  RN_ROOT=$(dirname "$here")
}

rn_job_main() {
  : "${RN_PRESET:?the job script must set RN_PRESET}"
  rn_find_root
  local job_name=${RN_JOB_NAME:-$RN_PRESET}
  RN_BUILD=${RN_BUILD:-$RN_ROOT/build}
  # Defaults are relative to the source tree.
  RN_DATA=${RN_DATA:-$RN_ROOT/${RN_DEFAULT_DATA:-datasets/$job_name}}
  RN_OUT=${RN_OUT:-$RN_ROOT/${RN_DEFAULT_OUT:-checkpoints/$job_name}}
  RN_LAUNCHER=${RN_LAUNCHER:-srun}
  RN_ARGS=${RN_ARGS:-}
  local threads=${RN_THREADS:-${SLURM_CPUS_PER_TASK:-1}}
  local restarts=${SLURM_RESTART_COUNT:-0}
  local max_restarts=${RN_MAX_RESTARTS:-1000}

  rn_log "start: preset=$RN_PRESET restart=$restarts nodes=${SLURM_JOB_NUM_NODES:-?}" \
    "tasks=${SLURM_NTASKS:-?} cpus/task=${SLURM_CPUS_PER_TASK:-?} threads=$threads" \
    "launcher=$RN_LAUNCHER host=$(hostname -s)"
  rn_log "build=$RN_BUILD data=$RN_DATA out=$RN_OUT args=$RN_ARGS"

  if [ -z "${SLURM_JOB_ID:-}" ]; then
    rn_log "error: not inside a Slurm job (submit with sbatch)"
    return 2
  fi
  local train=$RN_BUILD/rn-train
  if [ ! -x "$train" ]; then
    rn_log "error: $train not found or not executable (build the project, or set RN_BUILD)"
    return 2
  fi
  # A job script may define rn_prepare_data (idempotent) to create its dataset on demand.
  if declare -F rn_prepare_data >/dev/null; then
    rn_prepare_data || { rn_log "error: preparing $RN_DATA failed"; return 2; }
  fi
  if [ ! -d "$RN_DATA" ]; then
    rn_log "error: dataset dir $RN_DATA does not exist (set RN_DATA)"
    return 2
  fi
  mkdir -p "$RN_OUT" || { rn_log "error: cannot create $RN_OUT"; return 2; }

  export OMP_NUM_THREADS=$threads
  # OpenMP threads that wait spin ~300000 iterations before sleeping (libgomp's default); on a node
  # shared with other jobs (or oversubscribed) a thread spinning while the one it waits for is
  # descheduled makes a step 2-3x slower. A short spin keeps the speed on an idle node
  # (docs/PERF.md, "Threads, OpenMP waiting and oversubscription"). libgomp reads it at start-up.
  export GOMP_SPINCOUNT=${GOMP_SPINCOUNT:-20000}
  # RN_ARGS is split on whitespace, without glob expansion.
  set -f
  # shellcheck disable=SC2206
  local args=(--preset "$RN_PRESET" --data "$RN_DATA" --out "$RN_OUT" --resume auto
              --threads "$threads" $RN_ARGS)
  set +f
  local cmd
  case "$RN_LAUNCHER" in
    srun)
      # Slurm >= 22.05: srun no longer inherits --cpus-per-task from sbatch; pass it again.
      # --kill-on-bad-exit=0: a rank that exits 75 must not kill the others mid-checkpoint.
      # shellcheck disable=SC2206  # RN_SRUN_ARGS is split on purpose
      cmd=(srun --mpi=pmix --kill-on-bad-exit=0 --cpus-per-task="${SLURM_CPUS_PER_TASK:-1}"
           ${RN_SRUN_ARGS:-} "$train" "${args[@]}")
      ;;
    mpirun)
      if [ "$(id -u)" -eq 0 ]; then
        export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
      fi
      # Open MPI reads the allocation from Slurm (hosts; slots per node = tasks per node) and
      # starts its daemons with srun; ranks fill each node's slots in order, like srun's block
      # distribution. No binding: each rank runs T threads (RN_MPIRUN_ARGS adds options).
      # shellcheck disable=SC2206  # RN_MPIRUN_ARGS is split on purpose
      cmd=(mpirun -np "${SLURM_NTASKS:-1}" --bind-to none -x OMP_NUM_THREADS -x GOMP_SPINCOUNT
           ${RN_MPIRUN_ARGS:-} "$train" "${args[@]}")
      ;;
    *)
      rn_log "error: RN_LAUNCHER must be srun or mpirun, not '$RN_LAUNCHER'"
      return 2
      ;;
  esac

  trap 'rn_forward USR1' USR1
  trap 'rn_forward TERM' TERM
  rn_log "exec: ${cmd[*]}"
  "${cmd[@]}" &
  RN_CHILD=$!
  rn_wait_child
  local rc=$RN_RC
  RN_CHILD=
  rn_log "trainer exited with code $rc${RN_SIGNALLED:+ (signals at the batch shell: $RN_SIGNALLED)}"

  case "$rc" in
    0)
      rn_log "finished"
      return 0
      ;;
    "$RN_EXIT_REQUEUE")
      # SIGTERM at the batch shell means scancel, the time limit, or a preemption that Slurm
      # requeues by itself: keep the checkpoint, do not requeue (a user must be able to cancel).
      case " $RN_SIGNALLED " in
        *" TERM "*)
          rn_log "checkpointed; the job was terminated (SIGTERM: scancel, time limit or preemption): not requeueing"
          return "$RN_EXIT_REQUEUE"
          ;;
      esac
      if [ "$restarts" -ge "$max_restarts" ]; then
        rn_log "error: checkpointed but already restarted $restarts times (RN_MAX_RESTARTS=$max_restarts): not requeueing"
        return "$RN_EXIT_REQUEUE"
      fi
      rn_log "checkpointed: requeueing job $SLURM_JOB_ID (restart $((restarts + 1)))"
      # The requeue ends this script (SIGTERM); Slurm holds the job for AuthInfo cred_expire
      # seconds (default 120) before it can start again. See docs/SLURM.md.
      trap '' TERM USR1
      if scontrol requeue "$SLURM_JOB_ID"; then
        return 0
      fi
      rn_log "error: scontrol requeue $SLURM_JOB_ID failed (submitted without --requeue? JobRequeue=0?)"
      return "$RN_EXIT_REQUEUE"
      ;;
    *)
      rn_log "error: trainer failed with exit code $rc: not requeueing"
      return "$rc"
      ;;
  esac
}
