# ckpt: bitwise resume. N steps straight vs N/2, stop, resume (--resume auto, same out dir), N/2
# more give bitwise-identical parameters and momentum (rn-ckpt-diff exit 0), for 1 and 2 ranks
# (same rank and thread counts), with the ordinary recipe (batch-statistics BN, cifar augmentation,
# validation). Two ways to stop: --steps N/2 then rerun with --steps N; and a real SIGUSR1 to
# mpirun mid-run (exit 75 expected, "resumed from" on the rerun); and a stop on an epoch's last
# step and on the run's last step (RN_STOP_AFTER_STEP). Rank counts: env RN_RESUME_NP
# (default "1 2"). On a mismatch the message also says whether parameters and momentum without the
# BN running statistics are bitwise equal.
source "$(dirname "$0")/train_common.sh"
make_data "$DATA"
N=12
RS=(--batch 16 --eval-every 0)
for np in ${RN_RESUME_NP:-1 2}; do
  train_ok $np "$WORK/s$np.log" "${RS[@]}" --steps $N --out "$WORK/straight$np"
  train_ok $np "$WORK/h$np-a.log" "${RS[@]}" --steps $((N / 2)) --out "$WORK/half$np"
  train_ok $np "$WORK/h$np-b.log" "${RS[@]}" --steps $N --resume auto --out "$WORK/half$np"
  grep -q "resumed from .*ckpt-0*$((N / 2)).h5: epoch 0, step $((N / 2))" "$WORK/h$np-b.log" ||
    fail "np=$np: no 'resumed from ... step $((N / 2))' line: $(grep -m1 -i 'resum\|starting' "$WORK/h$np-b.log")"
  same_ckpt "$(latest_ckpt "$WORK/straight$np")" "$(latest_ckpt "$WORK/half$np")" "np=$np: $N straight vs $((N / 2)) + stop + resume"
done

# A stop on an epoch's last step (32 steps of 16 per epoch; RN_STOP_AFTER_STEP acts as a SIGUSR1
# during that step): it used to skip the checkpoint (the epoch end's) yet report one written, so
# the rerun started over. Also on the run's very last step.
E=$((512 / 16))
for np in ${RN_RESUME_NP:-1 2}; do
  train_ok $np "$WORK/e$np.log" "${RS[@]}" --steps $((E + 8)) --out "$WORK/estraight$np"
  for at in $E $((E + 8)); do
    what="epoch end"
    [ $at -eq $E ] || what="the run's last step"
    rc=0
    RN_STOP_AFTER_STEP=$at run_train $np 120 "$WORK/e$np-$at-a.log" "${RS[@]}" --steps $((E + 8)) --out "$WORK/e$np-$at" || rc=$?
    [ $rc -eq 75 ] && grep -q "^stop requested (signal): checkpoint at step $at written" "$WORK/e$np-$at-a.log" ||
      fail "np=$np: stop after step $at: exit $rc, $(tail -2 "$WORK/e$np-$at-a.log")"
    train_ok $np "$WORK/e$np-$at-b.log" "${RS[@]}" --steps $((E + 8)) --resume auto --out "$WORK/e$np-$at"
    grep -q "resumed from .*step $at," "$WORK/e$np-$at-b.log" ||
      fail "np=$np: stop after step $at: no 'resumed from ... step $at' line: $(grep -m1 'resumed from' "$WORK/e$np-$at-b.log")"
    same_ckpt "$(latest_ckpt "$WORK/estraight$np")" "$(latest_ckpt "$WORK/e$np-$at")" "np=$np: $((E + 8)) straight vs stop after step $at ($what) + resume"
  done
done

# SIGUSR1 to mpirun while training; long enough that the signal lands mid-run.
M=1500
for np in ${RN_RESUME_NP:-1 2}; do
  train_ok $np "$WORK/ls$np.log" "${RS[@]}" --steps $M --out "$WORK/lstraight$np"
  log=$WORK/sig$np-a.log
  "${MPIRUN[@]}" -n $np "$TRAIN" --data "$DATA" "${COMMON[@]}" "${RS[@]}" --steps $M --out "$WORK/sig$np" >"$log" 2>&1 &
  mp=$!
  for i in $(seq 1 300); do
    grep -q "step 30/" "$log" 2>/dev/null && break
    sleep 0.05
  done
  kill -USR1 $mp
  rc=none
  for i in $(seq 1 600); do
    if ! kill -0 $mp 2>/dev/null; then
      rc=0
      wait $mp || rc=$?
      break
    fi
    sleep 0.1
  done
  [ "$rc" = none ] && { kill -9 $mp; die "np=$np: mpirun did not exit within 60 s of SIGUSR1"; }
  stopped=$(sed -n 's/^stop requested (signal): checkpoint at step \([0-9]*\) written.*/\1/p' "$log")
  if [ "$rc" -ne 75 ] || [ -z "$stopped" ]; then
    fail "np=$np: SIGUSR1: exit $rc (expected 75), stop line '$stopped': $(tail -3 "$log")"
    continue
  fi
  ok "np=$np: SIGUSR1 -> exit 75 at step $stopped of $M"
  [ "$stopped" -lt $M ] || fail "np=$np: the signal did not land mid-run (step $stopped)"
  train_ok $np "$WORK/sig$np-b.log" "${RS[@]}" --steps $M --resume auto --out "$WORK/sig$np"
  grep -q "resumed from .*step $stopped," "$WORK/sig$np-b.log" ||
    fail "np=$np: no 'resumed from ... step $stopped' line: $(grep -m1 -i 'resum\|starting' "$WORK/sig$np-b.log")"
  same_ckpt "$(latest_ckpt "$WORK/lstraight$np")" "$(latest_ckpt "$WORK/sig$np")" "np=$np: $M straight vs SIGUSR1 at $stopped + resume"
done
finish
