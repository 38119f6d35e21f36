#!/bin/bash
# unit: rn-bench --ab runs both settings of a switch in one process (each --steps times, the
# settings alternating) and prints both medians and the paired ratio; an unknown switch is an
# error that names the option and the value, before any model is built. The page-fault line is
# printed. wino-bn runs its off setting on a second model planned with it off. The per-layer
# summary carries a large GEMM measured in the same run, and the replays in the backward: none with a
# --recompute-mb budget above them all; --ab recompute-mb compares a budget with none (a second model).
# With --layers 1, a two-model switch also sums the nodes the plans treat differently.
# rn-bench-conv --ab-rules and --ab-direct pair each pass.
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
for sw in ksplit gemm-par wino wino-small wino-bn dw-il direct-dyn add-stream wino-pre tile74 sweep1; do  # wino-bn, wino-pre: a second model, planned with it off
  "$BIN/rn-bench" --model cifar-resnet20 --batch 4 --steps 1 --warmup 0 --layers 0 --ab $sw 2>&1 | grep -q "^ab $sw: " ||
    { echo "FAIL: --ab $sw printed no A/B line"; fail=1; }
done
# wino-bn with --layers 1: the nodes the two plans treat differently (ResNet-20's 18 lazy BNs and
# their Winograd readers), summed per setting
wab=$("$BIN/rn-bench" --model cifar-resnet20 --batch 4 --steps 1 --warmup 0 --layers 1 --ab wino-bn 2>&1)
echo "$wab" | grep -Eq "^ab wino-bn nodes planned differently \(lazy BN or its reader\): 18, [0-9.]+ -> [0-9.]+ ms \([0-9.]+\)$" ||
  { echo "FAIL: --ab wino-bn --layers 1 printed no 'nodes planned differently' line for 18 nodes: $wab"; fail=1; }
# sweep1 with --layers 1: the convolutions it applies to against the others (none in ResNet-20:
# its convolutions have at most 64 channels)
sab=$("$BIN/rn-bench" --model cifar-resnet20 --batch 4 --steps 1 --warmup 0 --layers 1 --ab sweep1 2>&1)
echo "$sab" | grep -Eq "^ab sweep1 convolutions it applies to: 0, 0\.0 -> 0\.0 ms \(1\.000\); the other convolutions [0-9.]+ -> [0-9.]+ ms \([0-9.]+\)$" ||
  { echo "FAIL: --ab sweep1 --layers 1 printed no 'convolutions it applies to' line for 0 convolutions: $sab"; fail=1; }
# recompute-mb: the budget's model against a second one planned without it; it needs a budget
# (with --layers 1 both models' per-layer medians: their layers are the same)
rab=$("$BIN/rn-bench" --model cifar-resnet20 --batch 4 --steps 1 --warmup 0 --layers 1 --recompute-mb 1 --ab recompute-mb 2>&1)
echo "$rab" | grep -q "^ab recompute-mb: " || { echo "FAIL: --ab recompute-mb printed no A/B line: $rab"; fail=1; }
echo "$rab" | grep -Eq "^ab recompute-mb per layer \(medians over each setting's steps, ms\): conv\+fc [0-9.]+ -> [0-9.]+ \([0-9.]+\), other layers [0-9.]+ -> [0-9.]+ \([0-9.]+\)$" ||
  { echo "FAIL: --ab recompute-mb --layers 1 printed no per-layer A/B line: $rab"; fail=1; }
if msg=$("$BIN/rn-bench" --model cifar-resnet20 --batch 4 --steps 1 --warmup 0 --layers 0 --ab recompute-mb 2>&1); then
  echo "FAIL: --ab recompute-mb without a budget accepted"; fail=1
fi
echo "$msg" | grep -q "give --recompute-mb MB > 0" || { echo "FAIL: --ab recompute-mb without a budget: $msg"; fail=1; }
if msg=$("$BIN/rn-bench" --model cifar-resnet20 --recompute-mb -1 2>&1); then
  echo "FAIL: --recompute-mb -1 accepted"; fail=1
fi
echo "$msg" | grep -q "option recompute-mb: '-1'" || { echo "FAIL: message does not name option and value: $msg"; fail=1; }
if msg=$("$BIN/rn-bench" --model cifar-resnet20 --ab bogus 2>&1); then
  echo "FAIL: unknown switch accepted"; fail=1
fi
echo "$msg" | grep -q "option ab: unknown switch 'bogus'" || { echo "FAIL: message does not name option and value: $msg"; fail=1; }
# the step reports its page faults (the arena and workspaces are touched once, before the steps)
echo "$out" | grep -Eq '^page faults per timed step \(minor, rank 0\): forward\+loss [0-9.]+, backward\+allreduce\+sgd [0-9.]+$' ||
  { echo "FAIL: no page-fault line in: $out"; fail=1; }
# --layers 1: after the FMA peak, a large BLIS GEMM measured in the same run, and the convolutions'
# share of it (positive figures)
lay=$("$BIN/rn-bench" --model cifar-resnet20 --batch 4 --steps 1 --warmup 0 --layers 1 2>&1) ||
  { echo "FAIL: rn-bench --layers 1 exited $?: $lay"; fail=1; }
# the replays and the budget: some outputs replayed by default, none with a budget above them all
echo "$lay" | grep -Eq '^recomputed in the backward \(in their layers. bwd ms above\): [1-9][0-9]* outputs, .*budget: \+0 MB; all kept with \+(0\.[1-9]|[1-9][0-9]*\.[0-9]) MB\)$' ||
  { echo "FAIL: no replays reported by default: $(echo "$lay" | grep '^recomputed')"; fail=1; }
lay2=$("$BIN/rn-bench" --model cifar-resnet20 --batch 4 --steps 1 --warmup 0 --layers 1 --recompute-mb 1000 2>&1)
echo "$lay2" | grep -Eq '^recomputed in the backward \(in their layers. bwd ms above\): 0 outputs, .*budget: \+1000 MB; all kept with \+0\.0 MB\)$' ||
  { echo "FAIL: --recompute-mb 1000 still replays: $(echo "$lay2" | grep '^recomputed')"; fail=1; }
gl=$(echo "$lay" | grep '^a large GEMM measured now')
echo "$gl" | grep -Eq '^a large GEMM measured now \(BLIS sgemm 2048x2048x2048, the same threads\): [1-9][0-9]* GF/s = [1-9][0-9]*% of the FMA peak; the convolutions ran at [1-9][0-9]*% forward, [1-9][0-9]*% backward of it$' ||
  { echo "FAIL: no or malformed GEMM ceiling line: '$gl'"; fail=1; }
# rn-bench-conv --ab-rules: the GEMM path against the production rules, each pass paired
ab=$("$BIN/rn-bench-conv" --threads 2 --reps 2 --ab-rules 64,64,3,1,8,4 64,128,1,1,8,4 2>&1) ||
  { echo "FAIL: rn-bench-conv --ab-rules exited $?: $ab"; fail=1; }
n=$(echo "$ab" | grep -Ec '\| (fwd|dx |dW ) \([DgW]\) off +[0-9.]+ ms +[0-9.]+ GF/s \| on +[0-9.]+ ms +[0-9.]+ GF/s \| on/off [0-9.]+ \([0-9.]+-[0-9.]+\) \| max \|on-off\| [0-9.e+-]+ of max \|off\| [0-9.e+-]+$')
[ "$n" = 6 ] || { echo "FAIL: rn-bench-conv --ab-rules printed $n of 6 paired lines: $ab"; fail=1; }
# every pass of the 3x3 runs on Winograd under the rules and on im2col + BLIS off: different
# rounding, within float32's (a switch that did not switch would differ by exactly 0); the 1x1 at 8
# wide is on the GEMM path under both: the same bits
w3=$(echo "$ab" | grep -Ec '^  64->64   3x3 s1 @8   b4   \| (fwd|dx |dW ) \(W\) ')
[ "$w3" = 3 ] || { echo "FAIL: $w3 of the 3x3's 3 passes on Winograd under the rules: $ab"; fail=1; }
echo "$ab" | awk '/^  64->64   3x3/ { split($0, a, "max [|]on-off[|] "); split(a[2], b, " of max [|]off[|] ");
  if (!(b[1] + 0 > 0 && b[1] + 0 < 1e-4 * (b[2] + 0))) { print "FAIL: 3x3 settings differ by " b[1] " of " b[2]; bad = 1 } }
  /^  64->128  1x1/ { split($0, a, "max [|]on-off[|] "); split(a[2], b, " of "); if (b[1] + 0 != 0) { print "FAIL: 1x1 settings differ by " b[1]; bad = 1 } }
  END { exit bad }' || fail=1
# rn-bench-conv --ab-direct: the GEMM path against the direct kernel in every pass, whatever the
# width rules (the 1x1 at 8 wide and the 3x3 stride-2 dx at 8 are on the GEMM under the rules):
# six paired lines, all marked D, every pass within float32's rounding of the GEMM's, and not all
# the same bits (a switch that did not switch would differ by exactly 0 everywhere)
ad=$("$BIN/rn-bench-conv" --threads 2 --reps 2 --ab-direct 64,128,1,1,8,4 64,64,3,2,8,4 2>&1) ||
  { echo "FAIL: rn-bench-conv --ab-direct exited $?: $ad"; fail=1; }
n=$(echo "$ad" | grep -Ec '\| (fwd|dx |dW ) \(D\) off +[0-9.]+ ms +[0-9.]+ GF/s \| on +[0-9.]+ ms +[0-9.]+ GF/s \| on/off [0-9.]+ \([0-9.]+-[0-9.]+\) \| max \|on-off\| [0-9.e+-]+ of max \|off\| [0-9.e+-]+$')
[ "$n" = 6 ] || { echo "FAIL: rn-bench-conv --ab-direct printed $n of 6 paired lines marked D: $ad"; fail=1; }
echo "$ad" | awk '/ \(D\) off / { split($0, a, "max [|]on-off[|] "); split(a[2], b, " of max [|]off[|] ");
  if (!(b[1] + 0 <= 1e-4 * (b[2] + 0))) { print "FAIL: --ab-direct settings differ by " b[1] " of " b[2]; bad = 1 }
  if (b[1] + 0 > 0) diff = 1 }
  END { if (!diff) { print "FAIL: --ab-direct: every pass gave the same bits on and off"; bad = 1 } exit bad }' || fail=1
[ $fail = 0 ] && echo "bench_ab: passed"
exit $fail
