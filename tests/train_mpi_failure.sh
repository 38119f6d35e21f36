# mpi: a failing rank stops the whole job with a clear message instead of a hang.
# (a) kill -9 of one rank's process (rank 1, then rank 0) during training with 2 ranks: mpirun
#     must exit non-zero within 60 s and leave no rn-train process behind.
# (b) a corrupt JPEG sample in a --keep-jpeg shard: with 2 ranks and a full epoch, exactly one
#     rank reads it; the job must exit non-zero within 60 s with a message naming the shard file
#     and the sample, and leave no process behind.
source "$(dirname "$0")/train_common.sh"
make_data "$DATA"

# rank_pid MPIRUN_PID RANK: pid of the rn-train child of mpirun with that rank (via its environment).
rank_pid() {
  local p
  for p in $(pgrep -P "$1"); do
    if [ -r /proc/$p/environ ] && tr '\0' '\n' </proc/$p/environ | grep -qx "OMPI_COMM_WORLD_RANK=$2" &&
      grep -q rn-train /proc/$p/cmdline 2>/dev/null; then
      echo $p
      return 0
    fi
  done
  return 1
}

for victim in 1 0; do
  log=$WORK/kill$victim.log
  "${MPIRUN[@]}" -n 2 "$TRAIN" --data "$DATA" "${COMMON[@]}" --batch 16 --steps 1000000 --val-split "" \
    --resume none --out "$WORK/kill$victim" >"$log" 2>&1 &
  mp=$!
  for i in $(seq 1 300); do # up to 30 s for training to start
    grep -q "step 20/" "$log" 2>/dev/null && break
    sleep 0.1
  done
  grep -q "step 20/" "$log" || { kill -9 $mp; die "training did not start: $(tail -5 "$log")"; }
  pid=$(rank_pid $mp $victim) || { kill -9 $mp; die "no rn-train child of mpirun $mp with rank $victim"; }
  t0=$(date +%s%N)
  kill -9 "$pid"
  rc=none
  for i in $(seq 1 600); do # 60 s
    if ! kill -0 $mp 2>/dev/null; then
      rc=0
      wait $mp || rc=$?
      break
    fi
    sleep 0.1
  done
  dt=$(( ($(date +%s%N) - t0) / 1000000 ))ms
  if [ "$rc" = none ]; then
    kill -9 $mp 2>/dev/null
    fail "kill -9 of rank $victim: mpirun still running after 60 s (hang)"
  elif [ "$rc" -eq 0 ]; then
    fail "kill -9 of rank $victim: mpirun exited 0"
  else
    ok "kill -9 of rank $victim (pid $pid): mpirun exited $rc after $dt"
  fi
  sleep 0.5
  no_leftover
done

# (b) corrupt JPEG sample seen by exactly one rank.
JDATA=$WORK/jpeg
make_data "$JDATA" --jpeg --per-shard 200
SAMPLE=137
"$PY" - "$JDATA/train-00000.h5" $SAMPLE <<'PYEOF' || die "cannot corrupt the JPEG sample"
import sys, h5py, numpy as np
with h5py.File(sys.argv[1], "r+") as f:
    ds = f["images"]
    i = int(sys.argv[2])
    b = np.array(ds[i], dtype=np.uint8)
    b[:] = 0x5A  # no SOI marker, garbage throughout
    ds[i] = b
PYEOF
rc=0
t0=$(date +%s)
timeout -k 5 60 "${MPIRUN[@]}" -n 2 "$TRAIN" --data "$JDATA" "${COMMON[@]}" --crop 12 --aug none --batch 32 --steps 16 \
  --val-split "" --resume none --out "$WORK/badjpeg" >"$WORK/badjpeg.log" 2>&1 || rc=$?
dt=$(($(date +%s) - t0))
if [ $rc -eq 0 ]; then
  fail "corrupt JPEG sample: training finished with exit 0"
elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
  fail "corrupt JPEG sample: job hung (killed by the 60 s timeout)"
else
  msg=$(grep -m1 "train-00000.h5" "$WORK/badjpeg.log" || true)
  if [ -n "$msg" ] && echo "$msg" | grep -q "$SAMPLE"; then
    ok "corrupt JPEG: exit $rc after ${dt}s: $msg"
  else
    fail "corrupt JPEG: exit $rc but no message naming train-00000.h5 and sample $SAMPLE: $(grep -i -m3 'error\|rank' "$WORK/badjpeg.log")"
  fi
fi
no_leftover
finish
