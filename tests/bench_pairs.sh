#!/bin/bash
# unit: scripts/bench_pairs.sh runs two settings in alternating processes and prints, per setting,
# the medians of the step, the convolutions, the other layers and each -g group, and the paired
# ratio with its range (ResNet-20 has 9 fused BN+add+ReLU nodes); a setting that is not VAR=value
# and a group that matches no layer are errors.
set -u
BIN=$1
export OMP_NUM_THREADS=2
fail=0
PAIRS=$(dirname "$0")/../scripts/bench_pairs.sh
ptmp=$(mktemp -d)
pout=$(TMPDIR=$ptmp bash "$PAIRS" -n 2 -b "$BIN" -g 'bn\+add\+relu' 'RN_DX_OVER_X=0' '' --model cifar-resnet20 \
  --batch 4 --steps 1 --warmup 0 2>&1) || { echo "FAIL: bench_pairs.sh exited $?: $pout"; fail=1; }
[ "$(echo "$pout" | grep -Ec '^pair [12]: step A [0-9.]+ ms, B [0-9.]+ ms$')" = 2 ] ||
  { echo "FAIL: bench_pairs.sh did not report 2 pairs: $pout"; fail=1; }
for g in 'step' 'convolutions \(conv\)' 'other layers \(not conv, not linear\)' 'bn\\\+add\\\+relu \(9 layers\)'; do
  echo "$pout" | grep -Eq "^$g +[0-9.]+ +[0-9.]+ +[0-9.]+ \([0-9.]+-[0-9.]+\)$" ||
    { echo "FAIL: bench_pairs.sh printed no '$g' row: $pout"; fail=1; }
done
if msg=$(bash "$PAIRS" -n 1 -b "$BIN" 'FOO' '' 2>&1); then echo "FAIL: bench_pairs.sh accepted setting FOO"; fail=1; fi
echo "$msg" | grep -q "setting 'FOO' is not VAR=value" || { echo "FAIL: bench_pairs.sh bad setting: $msg"; fail=1; }
if msg=$(TMPDIR=$ptmp bash "$PAIRS" -n 1 -b "$BIN" -g nomatch '' '' --model cifar-resnet20 --batch 4 --steps 1 \
  --warmup 0 2>&1); then echo "FAIL: bench_pairs.sh accepted a group matching no layer"; fail=1; fi
echo "$msg" | grep -q "group 'nomatch' matches no layer" || { echo "FAIL: bench_pairs.sh empty group: $msg"; fail=1; }
rm -rf "$ptmp"
[ $fail = 0 ] && echo "bench_pairs: passed"
exit $fail
