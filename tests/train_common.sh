# Shared helpers of the end-to-end training tests (sourced by tests/train_*.sh).
# Every script is called as: bash train_X.sh BUILD_DIR SOURCE_DIR MPIRUN [MPIRUN ARGS...]
# (tests/train.cmake passes ${RN_MPIRUN}). Set RN_KEEP_TMP=1 to keep the work directory.
set -u
BUILD=$1
SRC=$2
shift 2
MPIRUN=("$@")
PY=${RN_PYTHON:-/usr/bin/python3}
TRAIN=$BUILD/rn-train
DIFF=$BUILD/rn-ckpt-diff
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
TEST_NAME=$(basename "$0" .sh)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/rn-$TEST_NAME-XXXXXX")
cleanup() {
  if [ -n "${RN_KEEP_TMP:-}" ]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
NFAIL=0

fail() { echo "FAIL: $*" >&2; NFAIL=$((NFAIL + 1)); }
die() { echo "FAIL: $*" >&2; exit 1; }
ok() { echo "ok: $*"; }
finish() {
  if [ "$NFAIL" -gt 0 ]; then echo "$TEST_NAME: $NFAIL check(s) failed"; exit 1; fi
  echo "$TEST_NAME: all checks passed"; exit 0
}

[ -x "$TRAIN" ] || die "$TRAIN not built"

# make_data DIR [make_tiny_data.py options]: tiny raw (or --jpeg) data set (12x12 grey, 10 classes).
make_data() {
  local dir=$1
  shift
  local conv=$BUILD/rn-convert-idx
  case " $* " in *" --jpeg "*) conv=$BUILD/rn-convert-jpeg ;; esac
  "$PY" "$SRC/tests/make_tiny_data.py" --convert "$conv" "$dir" "$@" >/dev/null || die "make_tiny_data.py $dir $* failed"
}
DATA=$WORK/data

# Options shared by every run (the tiny recipe); tests add --out, --batch, --steps ...
COMMON=(--model cifar-resnet8 --width 4 --threads 1 --progress lines --log-every 1 --ckpt-every-minutes 0
        --lr 0.05 --seed 3 --momentum 0.9 --wd 0.0001)

# run_train NP TIMEOUT LOG [rn-train options]: mpirun -n NP rn-train ... ; output in LOG; returns
# the exit code (124/137 = timed out).
run_train() {
  local np=$1 t=$2 log=$3
  shift 3
  timeout -k 5 "$t" "${MPIRUN[@]}" -n "$np" "$TRAIN" --data "$DATA" "${COMMON[@]}" "$@" >"$log" 2>&1
}

# train_ok NP LOG [options]: run_train with 120 s timeout; any non-zero exit is a failure.
train_ok() {
  local np=$1 log=$2
  shift 2
  local rc=0
  run_train "$np" 120 "$log" "$@" || rc=$?
  if [ $rc -ne 0 ]; then
    echo "---- $log (exit $rc) ----" >&2
    tail -20 "$log" >&2
    die "rn-train -n $np $* exited with $rc"
  fi
}

# latest_ckpt DIR: path of the checkpoint DIR/latest names.
latest_ckpt() {
  [ -f "$1/latest" ] || die "$1/latest missing"
  echo "$1/$(head -1 "$1/latest")"
}

# same_ckpt A B WHAT: bitwise identical params + momentum (rn-ckpt-diff).
same_ckpt() {
  local out rc=0
  out=$("$DIFF" "$1" "$2" 2>&1) || rc=$?
  if [ $rc -eq 0 ]; then
    ok "$3: bitwise identical"
  else
    local tr
    tr=$("$PY" "$SRC/tests/train_compare.py" "$1" "$2" 0 --no-buffers 2>&1)
    fail "$3: rn-ckpt-diff $1 $2 -> exit $rc: $out; without BN running statistics: $tr"
  fi
}

# close_ckpt A B TOL WHAT: max relative error of params + momentum below TOL (train_compare.py).
close_ckpt() {
  local out rc=0
  out=$("$PY" "$SRC/tests/train_compare.py" "$1" "$2" "$3" 2>&1) || rc=$?
  if [ $rc -eq 0 ]; then ok "$4: $out"; else fail "$4: $out"; fi
}

# last_metric DIR FIELD [TYPE]: FIELD of the last metrics line of TYPE (default train).
last_metric() {
  "$PY" - "$1/metrics.jsonl" "$2" "${3:-train}" <<'PYEOF'
import json, sys
v = None
for line in open(sys.argv[1]):
    line = line.strip()
    if line:
        d = json.loads(line)
        if d.get("type") == sys.argv[3]:
            v = d.get(sys.argv[2])
print(v)
PYEOF
}

# no_leftover: no rn-train process of this test (by work dir on its command line) survives.
no_leftover() {
  local left
  left=$(pgrep -f "rn-train --data $WORK" || true)
  if [ -n "$left" ]; then
    fail "rn-train processes left behind: $left"
    kill -9 $left 2>/dev/null || true
  else
    ok "no rn-train process left"
  fi
}
