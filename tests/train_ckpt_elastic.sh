# ckpt: elastic resume. A checkpoint written with 2 ranks resumed with 1 rank, and one written
# with 1 rank resumed with 2 and 4 ranks (same global batch 32): training continues from the saved
# step and sample position ("resumed from ... step 6, position 192 (saved with P ranks" and the
# last step in metrics.jsonl), and with --bn-eval 1 --aug none the final parameters and momentum
# match the uninterrupted 1-rank run within TOL = 1e-5 relative. Another global batch (64 on 2
# ranks, 16 on 1 rank): the LR is rescaled by the linear rule: lr in metrics.jsonl = 0.05*new/32.
source "$(dirname "$0")/train_common.sh"
TOL=1e-5
make_data "$DATA"
EL=(--bn-eval 1 --aug none --batch 32 --val-split "" --eval-every 0)
train_ok 1 "$WORK/ref.log" "${EL[@]}" --steps 12 --out "$WORK/ref"
REF=$(latest_ckpt "$WORK/ref")
train_ok 2 "$WORK/from2.log" "${EL[@]}" --steps 6 --out "$WORK/from2"
train_ok 1 "$WORK/from1.log" "${EL[@]}" --steps 6 --out "$WORK/from1"

# check_resumed LOG DIR SAVED_NP: the resume line and the final step.
check_resumed() {
  grep -q "resumed from .*ckpt-00000006.h5: epoch 0, step 6, position 192 (saved with $3 rank" "$1" ||
    fail "$1: no 'resumed from ... step 6, position 192 (saved with $3 ranks' line: $(grep -m1 -i 'resum\|starting\|error' "$1")"
  local s
  s=$(last_metric "$2" step)
  [ "$s" = 12 ] || fail "$2/metrics.jsonl: last step $s, expected 12"
  local n
  n=$(grep -c '"type":"train"' "$2/metrics.jsonl")
  [ "$n" = 12 ] || fail "$2/metrics.jsonl: $n train lines, expected 12 (one per step, none lost or repeated)"
}

for case in "2 1" "1 2" "1 4"; do
  set -- $case
  d=$WORK/e$1to$2
  cp -r "$WORK/from$1" "$d"
  train_ok $2 "$d.log" "${EL[@]}" --steps 12 --resume auto --out "$d"
  check_resumed "$d.log" "$d" $1
  close_ckpt "$(latest_ckpt "$d")" "$REF" $TOL "$1 -> $2 ranks (global batch 32) vs uninterrupted"
done

# Another global batch: linear LR rescaling relative to the batch the run started with.
for case in "2 64" "1 16"; do
  set -- $case
  d=$WORK/b$2
  cp -r "$WORK/from1" "$d"
  train_ok $1 "$d.log" "${EL[@]}" --batch $2 --steps 8 --resume auto --out "$d"
  grep -q "resumed from .*step 6, position 192 (saved with 1 rank.*global batch 32)" "$d.log" ||
    fail "batch $2: resume line missing: $(grep -m1 -i 'resum\|starting\|error' "$d.log")"
  lr=$(last_metric "$d" lr)
  want=$("$PY" -c "print(0.05 * $2 / 32)")
  if "$PY" -c "import sys; sys.exit(0 if abs($lr - $want) <= 1e-6 * $want else 1)"; then
    ok "global batch 32 -> $2 on $1 rank(s): lr $lr = 0.05*$2/32"
  else
    fail "global batch 32 -> $2: lr in metrics.jsonl is $lr, expected $want"
  fi
  s=$(last_metric "$d" samples)
  [ "$s" = $((192 + 2 * $2)) ] || fail "batch $2: samples $s, expected $((192 + 2 * $2))"
done
finish
