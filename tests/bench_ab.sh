#!/bin/bash
# unit: rn-bench --ab runs both settings of a switch in one process (each --steps times, the
# settings alternating) and prints both medians and the paired ratio; an unknown switch is an
# error that names the option and the value, before any model is built. The page-fault line is
# printed. wino-bn runs its off setting on a second model planned with it off.
set -u
BIN=$1
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=2
fail=0
out=$("$BIN/rn-bench" --model cifar-resnet20 --batch 8 --steps 3 --warmup 1 --layers 0 --ab narrow 2>&1) ||
  { echo "FAIL: rn-bench --ab narrow exited $?: $out"; exit 1; }
line=$(echo "$out" | grep '^ab narrow: ')
[ -n "$line" ] || { echo "FAIL: no 'ab narrow:' line in: $out"; fail=1; }
echo "$line" | grep -Eq 'off median_step_s [0-9.]+, on median_step_s [0-9.]+, on/off [0-9.]+ \(median of 3 paired ratios, from [0-9.]+ to [0-9.]+\)' ||
  { echo "FAIL: malformed A/B line: $line"; fail=1; }
for sw in ksplit gemm-par wino wino-small wino-bn dw-il; do  # wino-bn: a second model, planned with it off
  "$BIN/rn-bench" --model cifar-resnet20 --batch 4 --steps 1 --warmup 0 --layers 0 --ab $sw 2>&1 | grep -q "^ab $sw: " ||
    { echo "FAIL: --ab $sw printed no A/B line"; fail=1; }
done
if msg=$("$BIN/rn-bench" --model cifar-resnet20 --ab bogus 2>&1); then
  echo "FAIL: unknown switch accepted"; fail=1
fi
echo "$msg" | grep -q "option ab: unknown switch 'bogus'" || { echo "FAIL: message does not name option and value: $msg"; fail=1; }
# the step reports its page faults (the arena and workspaces are touched once, before the steps)
echo "$out" | grep -Eq '^page faults per timed step \(minor, rank 0\): forward\+loss [0-9.]+, backward\+allreduce\+sgd [0-9.]+$' ||
  { echo "FAIL: no page-fault line in: $out"; fail=1; }
[ $fail = 0 ] && echo "bench_ab: passed"
exit $fail
