# ckpt: rn-eval, periodic checkpoints and retention through the trainer.
# - a 2-rank run with --ckpt-every-steps 3 --keep 2 over 12 steps with validation at the end: the
#   kept files are exactly the newest 2 plus `best`, `latest` names the newest;
# - rn-eval on 1 and 2 ranks reproduces the trainer's final validation top-1 error exactly
#   (single crop on images of the model's size = the trainer's eval), 10-crop runs and reports;
# - rn-eval on a garbage checkpoint or with a missing --data fails naming the file/option.
source "$(dirname "$0")/train_common.sh"
EVAL=$BUILD/rn-eval
make_data "$DATA"
train_ok 2 "$WORK/run.log" --batch 32 --steps 12 --ckpt-every-steps 3 --keep 2 --out "$WORK/out" --resume none
files=$(cd "$WORK/out" && ls ckpt-*.h5 | tr '\n' ' ')
[ "$files" = "ckpt-00000009.h5 ckpt-00000012.h5 " ] && ok "periodic checkpoints kept: $files" ||
  fail "expected ckpt-00000009.h5 ckpt-00000012.h5 after --ckpt-every-steps 3 --keep 2, got: $files"
[ "$(head -1 "$WORK/out/latest")" = "ckpt-00000012.h5" ] && ok "latest -> ckpt-00000012.h5" || fail "latest wrong"
[ -f "$WORK/out/best" ] && ok "best pointer written" || fail "no best pointer"
want=$(last_metric "$WORK/out" top1_err val)
[ "$want" != "None" ] || die "no validation record in metrics.jsonl"
for np in 1 2; do
  rc=0
  timeout -k 5 120 "${MPIRUN[@]}" -n $np "$EVAL" --checkpoint "$(latest_ckpt "$WORK/out")" --data "$DATA" \
    --split test --threads 1 --batch 16 >"$WORK/eval$np.log" 2>&1 || rc=$?
  [ $rc -eq 0 ] || { cat "$WORK/eval$np.log" >&2; die "rn-eval -n $np exited $rc"; }
  got=$(sed -n 's/.*(single crop): top-1 error \([0-9.]*\)%.*/\1/p' "$WORK/eval$np.log")
  exp=$("$PY" -c "print('%.2f' % (100 * $want))")
  [ "$got" = "$exp" ] && ok "rn-eval -n $np single crop top-1 error $got% = trainer's validation" ||
    fail "rn-eval -n $np single crop top-1 error '$got' != trainer's $exp"
  grep -q "(10-crop): top-1 error [0-9.]*%, top-5 error [0-9.]*%" "$WORK/eval$np.log" && ok "10-crop reported" ||
    fail "no 10-crop line: $(cat "$WORK/eval$np.log")"
  grep -q ", 128 images" "$WORK/eval$np.log" && ok "every test image evaluated once (128)" || fail "image count wrong"
done
echo garbage >"$WORK/bad.h5"
rc=0
timeout -k 5 60 "${MPIRUN[@]}" -n 2 "$EVAL" --checkpoint "$WORK/bad.h5" --data "$DATA" >"$WORK/bad.log" 2>&1 || rc=$?
[ $rc -ne 0 ] && grep -q "bad.h5" "$WORK/bad.log" && ok "garbage checkpoint: exit $rc naming the file" ||
  fail "garbage checkpoint: exit $rc, $(cat "$WORK/bad.log")"
rc=0
timeout -k 5 60 "${MPIRUN[@]}" -n 1 "$EVAL" --checkpoint "$(latest_ckpt "$WORK/out")" >"$WORK/nodata.log" 2>&1 || rc=$?
[ $rc -eq 2 ] && grep -q -- "--data" "$WORK/nodata.log" && ok "missing --data: exit 2" || fail "missing --data: exit $rc"
no_leftover
finish
