# mpi: replicas stay bitwise identical. 2 and 3 ranks train with --check-replicas-every 1 (rank 0's
# checksum of all parameters + momentum compared on every step; the trainer stops with an error
# if any rank differs) and must finish cleanly. Mode (env RN_REPLICA_MODE): "bn-eval" trains with
# --bn-eval 1 --aug none; "default" uses the ordinary recipe (batch-statistics BN, cifar augmentation).
# Proof that the check can fail: an MPMD launch where rank 1 gets another --lr (or --wd) must stop
# with exit 1 and "replicas diverged" at step 1, within the timeout.
source "$(dirname "$0")/train_common.sh"
MODE=${RN_REPLICA_MODE:-bn-eval}
make_data "$DATA"
if [ "$MODE" = bn-eval ]; then R=(--bn-eval 1 --aug none); else R=(--bn-eval 0 --aug cifar); fi
R+=(--batch 24 --steps 12 --bucket-mb 0.01 --check-replicas-every 1 --resume none)
for np in 2 3; do
  rc=0
  run_train $np 120 "$WORK/r$np.log" "${R[@]}" --out "$WORK/r$np" || rc=$?
  if [ $rc -eq 0 ] && grep -q "training finished: 12 steps" "$WORK/r$np.log"; then
    ok "$MODE: $np ranks: 12 steps with a replica check after every step"
  else
    fail "$MODE: $np ranks with --check-replicas-every 1 exited $rc: $(grep -m1 'error' "$WORK/r$np.log")"
  fi
done
if [ "$MODE" = bn-eval ]; then
  for opt in lr wd; do
    if [ $opt = lr ]; then a=(--lr 0.05); b=(--lr 0.06); else a=(--wd 0.0001); b=(--wd 0.01); fi
    rc=0
    timeout -k 5 120 "${MPIRUN[@]}" -n 1 "$TRAIN" --data "$DATA" "${COMMON[@]}" "${R[@]}" --out "$WORK/div-$opt" "${a[@]}" \
      : -n 1 "$TRAIN" --data "$DATA" "${COMMON[@]}" "${R[@]}" --out "$WORK/div-$opt" "${b[@]}" >"$WORK/div-$opt.log" 2>&1 || rc=$?
    if [ $rc -eq 1 ] && grep -q "replica check at step 1: .*first: rank 1.*replicas diverged" "$WORK/div-$opt.log"; then
      ok "injected divergence (rank 1 --$opt ${b[1]}) detected: $(grep -m1 'replica check' "$WORK/div-$opt.log")"
    else
      fail "injected divergence (rank 1 --$opt) not detected as expected: exit $rc; $(grep -m1 error "$WORK/div-$opt.log")"
    fi
  done
fi
no_leftover
finish
