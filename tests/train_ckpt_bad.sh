# ckpt: resume edge cases and bad input, 2 ranks, every run under a timeout (no hang).
# - --resume auto with a nonexistent and with an empty out dir starts fresh;
# - a corrupted newest checkpoint (bytes flipped in the middle of the file) makes --resume auto
#   fall back to the previous one with a warning naming the bad file;
# - an explicit --resume of a garbage file (and of a missing file) fails with an error naming the
#   file, and the checkpoints already in the out dir stay intact (same bytes, same latest);
# - bad options (unknown option, unknown preset, batch not divisible by the rank count, a missing
#   data dir, an unknown model, a non-numeric value, a negative --recompute-mb) exit 2 (or 1 for the data dir) with a message
#   naming the option/value.
source "$(dirname "$0")/train_common.sh"
make_data "$DATA"
B=(--batch 16 --val-split "" --eval-every 0)

# expect_fail NAME CODES PATTERN [rn-train options]: 2 ranks, exit code in CODES (e.g. "1 2"), and
# an error line of the output matches PATTERN (grep -E), within 60 s.
expect_fail() {
  local name=$1 codes=$2 pat=$3
  shift 3
  local rc=0 log=$WORK/$name.log
  run_train 2 60 "$log" "$@" || rc=$?
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
    fail "$name: hung (killed by the 60 s timeout)"
  elif ! echo " $codes " | grep -q " $rc "; then
    fail "$name: exit $rc, expected one of {$codes}: $(grep -m2 -i error "$log")"
  elif ! grep -i error "$log" | grep -Eq -- "$pat"; then
    fail "$name: exit $rc but no message matching '$pat': $(grep -m2 -i 'error' "$log")"
  else
    ok "$name: exit $rc: $(grep -i error "$log" | grep -E -m1 -- "$pat")"
  fi
}

# Fresh starts.
train_ok 2 "$WORK/fresh1.log" "${B[@]}" --steps 2 --resume auto --out "$WORK/does/not/exist"
grep -q "starting from initialisation" "$WORK/fresh1.log" && ok "nonexistent out dir: fresh start" ||
  fail "nonexistent out dir: no 'starting from initialisation'"
mkdir -p "$WORK/empty"
train_ok 2 "$WORK/fresh2.log" "${B[@]}" --steps 2 --resume auto --out "$WORK/empty"
grep -q "starting from initialisation" "$WORK/fresh2.log" && ok "empty out dir: fresh start" ||
  fail "empty out dir: no 'starting from initialisation'"

# Corrupt newest checkpoint -> fall back to the previous one.
O=$WORK/run
train_ok 2 "$WORK/run1.log" "${B[@]}" --steps 8 --ckpt-every-steps 4 --keep 3 --out "$O"
[ -f "$O/ckpt-00000004.h5" ] && [ -f "$O/ckpt-00000008.h5" ] || die "expected ckpt-4 and ckpt-8 in $O: $(ls "$O")"
cp -r "$O" "$WORK/run-copy" # intact copy for the garbage test
"$PY" - "$O/ckpt-00000008.h5" <<'PYEOF' || die "cannot corrupt"
import os, sys
p = sys.argv[1]
n = os.path.getsize(p)
with open(p, "r+b") as f:
    f.seek(n // 2)
    b = bytearray(f.read(256))
    f.seek(n // 2)
    f.write(bytes(x ^ 0xFF for x in b))
PYEOF
sum4=$(md5sum <"$O/ckpt-00000004.h5")
train_ok 2 "$WORK/run2.log" "${B[@]}" --steps 12 --ckpt-every-steps 4 --keep 3 --resume auto --out "$O"
if grep -q "resumed from .*ckpt-00000004.h5: epoch 0, step 4" "$WORK/run2.log"; then
  ok "corrupt newest: resumed from ckpt-00000004.h5"
else
  fail "corrupt newest: did not fall back to ckpt-00000004.h5: $(grep -m1 -i 'resum\|starting' "$WORK/run2.log")"
fi
if grep -i "ckpt-00000008.h5" "$WORK/run2.log" | grep -qiv "resumed from"; then
  ok "warning: $(grep -i -m1 'ckpt-00000008.h5' "$WORK/run2.log")"
else
  fail "corrupt newest: no warning naming ckpt-00000008.h5"
fi
s=$(last_metric "$O" step)
[ "$s" = 12 ] || fail "corrupt newest: final step $s, expected 12"

# Explicit --resume of a garbage / missing file: clear error, out dir intact.
G=$WORK/garbage.h5
head -c 20000 /dev/urandom >"$G"
O2=$WORK/run-copy
before=$(cd "$O2" && md5sum ckpt-*.h5 latest)
expect_fail resume-garbage "1 2" "garbage\.h5" "${B[@]}" --steps 12 --resume "$G" --out "$O2"
expect_fail resume-missing "1 2" "no-such\.h5" "${B[@]}" --steps 12 --resume "$WORK/no-such.h5" --out "$O2"
after=$(cd "$O2" && md5sum ckpt-*.h5 latest)
[ "$before" = "$after" ] && ok "checkpoints and latest in the out dir unchanged" ||
  fail "out dir changed by a failed resume: before [$before] after [$after]"
"$BUILD/rn-ckpt-info" "$O2/ckpt-00000008.h5" >/dev/null 2>&1 || fail "previous checkpoint no longer verifies"

# Bad options (2 ranks).
expect_fail unknown-option "2" "no-such-option" "${B[@]}" --steps 2 --no-such-option 3 --out "$WORK/bad"
expect_fail unknown-preset "2" "no-such-preset" --preset no-such-preset "${B[@]}" --steps 2 --out "$WORK/bad"
expect_fail batch-split "2" "batch.*15" --batch 15 --steps 2 --val-split "" --out "$WORK/bad"
expect_fail missing-data "1 2" "$WORK/missing" "${B[@]}" --steps 2 --data "$WORK/missing" --out "$WORK/bad"
expect_fail unknown-model "2" "resnet7" "${B[@]}" --steps 2 --model resnet7 --out "$WORK/bad"
expect_fail bad-number "2" "lr.*abc|abc.*lr" "${B[@]}" --steps 2 --lr abc --out "$WORK/bad"
expect_fail bad-recompute-mb "2" "recompute-mb.*-5" "${B[@]}" --steps 2 --recompute-mb -5 --out "$WORK/bad"
no_leftover
finish
