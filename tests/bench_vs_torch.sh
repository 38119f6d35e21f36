#!/bin/bash
# ref: scripts/bench_vs_torch.sh runs rn-bench and PyTorch alternately (a tiny CIFAR ResNet-20,
# real programs) and its summary agrees with its own per-run figures: the medians, the ratio of the
# medians, the paired ratio (median of the per-run ratios) and their range; each per-run ratio is
# ours/torch of that run's img/s. A missing build directory is an error that names the path.
set -u
SRC=$1 BIN=$2
export OMP_NUM_THREADS=2 STEPS=2 WARMUP=1
fail=0
out=$(bash "$SRC/scripts/bench_vs_torch.sh" -r 3 -b "$BIN" cifar-resnet20 8 2 2>&1) ||
  { echo "FAIL: bench_vs_torch.sh exited $?: $out"; exit 1; }
runs=$(echo "$out" | grep '^== cifar-resnet20 batch 8 threads 2: per-run img/s ours: ')
row=$(echo "$out" | grep '^cifar-resnet20 ')
[ -n "$runs" ] && [ -n "$row" ] || { echo "FAIL: no per-run line or summary row in: $out"; exit 1; }
echo "$runs"; echo "$out" | grep -A1 '^model  *batch'
echo "$out" | grep -q '^== side by side (medians of 3 alternating runs each, ratio = ours/torch of the medians, paired' ||
  { echo "FAIL: no summary header"; fail=1; }
res=$(awk -v runs="$runs" -v row="$row" 'BEGIN {
  sub(/.*per-run img\/s ours: /, "", runs)
  n = split(runs, f, " ")
  # ours: o1 o2 o3 torch: t1 t2 t3 ratios: r1 r2 r3
  if (n != 11 || f[4] != "torch:" || f[8] != "ratios:") { print "per-run line has", n, "fields"; exit }
  for (i = 1; i <= 3; i++) { o[i] = f[i]; t[i] = f[i + 4]; r[i] = f[i + 8] }
  # r (2 decimals, from the step times) against the img/s (1 decimal): rounding and 1%
  for (i = 1; i <= 3; i++) { q = o[i] / t[i]; if ((r[i] - q)^2 > (0.0051 + 0.01 * q)^2) { print "ratio", i, r[i], "is not", q; exit } }
  split(row, g, "|"); split(g[2], s, " ")
  # ours_med torch_med ratio paired (min-max)
  om = med(o); tm = med(t); rm = med(r); rmin = r[1]; rmax = r[1]
  for (i = 2; i <= 3; i++) { if (r[i] < rmin) rmin = r[i]; if (r[i] > rmax) rmax = r[i] }
  want = sprintf("%s %s %.2fx %.2fx (%.2f-%.2f)", om, tm, om / tm, rm, rmin, rmax)
  got = sprintf("%s %s %s %s %s", s[1], s[2], s[3], s[4], s[5])
  # the paired figures are printed from 4-decimal ratios, the per-run line from 2: allow 0.01
  if (got != want) {
    split(want, w, " "); split(got, h, " ")
    if (w[1] != h[1] || w[2] != h[2] || w[3] != h[3]) { print "summary", got, "expected", want; exit }
    gsub(/[x()]/, "", h[4]); gsub(/[x()]/, "", w[4]); split(h[5], hr, "-"); split(w[5], wr, "-")
    gsub(/[()]/, "", hr[1]); gsub(/[()]/, "", hr[2]); gsub(/[()]/, "", wr[1]); gsub(/[()]/, "", wr[2])
    if ((h[4] - w[4])^2 > 0.0001001 || (hr[1] - wr[1])^2 > 0.0001001 || (hr[2] - wr[2])^2 > 0.0001001) {
      print "paired", got, "expected", want; exit
    }
  }
  print "ok"
}
function med(a,   b, i, j, x) {
  for (i = 1; i <= 3; i++) b[i] = a[i] + 0
  for (i = 1; i <= 3; i++) for (j = i + 1; j <= 3; j++) if (b[j] < b[i]) { x = b[i]; b[i] = b[j]; b[j] = x }
  return b[2]
}')
[ "$res" = ok ] || { echo "FAIL: $res"; fail=1; }
if msg=$(bash "$SRC/scripts/bench_vs_torch.sh" -b /nonexistent/build cifar-resnet20 8 2 2>&1); then
  echo "FAIL: a missing build directory was accepted"; fail=1
fi
echo "$msg" | grep -q "/nonexistent/build/rn-bench not found" || { echo "FAIL: message does not name the path: $msg"; fail=1; }
[ $fail = 0 ] && echo "bench_vs_torch: summary consistent with the per-run figures"
exit $fail
