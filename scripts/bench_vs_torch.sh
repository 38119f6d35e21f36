#!/bin/bash
# Side-by-side training-step benchmark: our rn-bench and PyTorch (scripts/bench_torch.py) on the
# same model, batch and thread count, run ALTERNATELY R times (so both see the same machine load),
# then medians side by side, the ratio of the medians, the paired ratio (the median of the R
# per-run ratios ours/torch, each pair run back to back, with their range: it cancels the host's
# slow drifts, which the ratio of medians does not when the host changes phase mid-series), peak
# RSS of both, the FMA peak measured in our runs and both programs' share of it, the load average
# before each run, and our per-layer table from the last rn-bench run.
#
# Usage: scripts/bench_vs_torch.sh [-r R] [-b BUILD_DIR] [MODEL BATCH [THREADS]]
#   default: resnet50 32, cifar-resnet20 128, cifar-resnet56 128, all with 2 threads, R = 3.
# Environment: STEPS/WARMUP override the step counts (default 10/3 for CIFAR, 3/1 for ImageNet
# models); TORCH_PY (default /usr/bin/python3); TCMALLOC (default Debian's libtcmalloc_minimal.so.4,
# preloaded for PyTorch ONLY: glibc malloc costs PyTorch ~40% here); RN_RECOMPUTE_MB (read by
# rn-bench: the recompute budget, rn-train's --recompute-mb; default 0).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
R=3
build=${BUILD_DIR:-$here/build-perf}
while getopts "r:b:" o; do
  case $o in
    r) R=$OPTARG ;;
    b) build=$OPTARG ;;
    *) sed -n '2,15p' "$0"; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
bench=$build/rn-bench
torch_py=${TORCH_PY:-/usr/bin/python3}
tcm=${TCMALLOC:-/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4}
[ -x "$bench" ] || { echo "bench_vs_torch: $bench not found (build first: cmake --build $build)" >&2; exit 2; }
[ -f "$tcm" ] || { echo "bench_vs_torch: $tcm not found (apt-get install libtcmalloc-minimal4)" >&2; exit 2; }

if [ $# -ge 2 ]; then
  workloads=("$1 $2 ${3:-2}")
else
  workloads=("resnet50 32 2" "cifar-resnet20 128 2" "cifar-resnet56 128 2")
fi

median() { sort -g | awk '{v[NR]=$1} END {if (NR%2) print v[(NR+1)/2]; else print (v[NR/2]+v[NR/2+1])/2}'; }
field() { sed -n "s/.* $1 \([0-9.]*\).*/\1/p"; }
load1() { cut -d' ' -f1 /proc/loadavg; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
summary=$tmp/summary
printf "%-16s %5s %3s | %12s %12s %7s %20s | %10s %10s | %9s %9s %9s | %s\n" model batch thr "ours img/s" "torch img/s" ratio \
  "paired (range)" "ours RSS" "torch RSS" "FMA peak" "ours %pk" "torch %pk" "load (1-min avg before each run)" >"$summary"
for wl in "${workloads[@]}"; do
  read -r model batch thr <<<"$wl"
  case $model in
    cifar-*) steps=${STEPS:-10} warm=${WARMUP:-3} ;;
    *) steps=${STEPS:-3} warm=${WARMUP:-1} ;;
  esac
  : >"$tmp/ours" ; : >"$tmp/torch"; loads=""
  for ((i = 1; i <= R; i++)); do
    l=$(load1); loads="$loads ours:$l"
    echo "[$model b$batch t$thr] run $i/$R: rn-bench (load $l)" >&2
    OMP_NUM_THREADS=$thr "$bench" --model "$model" --batch "$batch" --threads "$thr" --steps "$steps" \
      --warmup "$warm" --layers 1 >"$tmp/last_ours.txt" 2>&1 || { cat "$tmp/last_ours.txt" >&2; exit 1; }
    grep '^ours ' "$tmp/last_ours.txt" >>"$tmp/ours"
    l=$(load1); loads="$loads torch:$l"
    echo "[$model b$batch t$thr] run $i/$R: PyTorch (load $l)" >&2
    LD_PRELOAD=$tcm OMP_NUM_THREADS=$thr "$torch_py" "$here/scripts/bench_torch.py" "$model" "$batch" "$thr" \
      --steps "$steps" --warmup "$warm" >"$tmp/last_torch.txt" 2>&1 || { cat "$tmp/last_torch.txt" >&2; exit 1; }
    grep '^torch ' "$tmp/last_torch.txt" >>"$tmp/torch"
  done
  oi=$(field img_s <"$tmp/ours" | median); ti=$(field img_s <"$tmp/torch" | median)
  orss=$(field peak_rss_mb <"$tmp/ours" | sort -g | tail -1); trss=$(field peak_rss_mb <"$tmp/torch" | sort -g | tail -1)
  ratio=$(awk -v a="$oi" -v b="$ti" 'BEGIN {printf "%.2f", a / b}')
  # run i of ours against run i of PyTorch (run right after it); from the step times (4 decimals;
  # the same batch, so torch's step / ours = ours img/s / torch's)
  field img_s <"$tmp/ours" >"$tmp/oi"; field img_s <"$tmp/torch" >"$tmp/ti"
  paste -d' ' <(field median_step_s <"$tmp/ours") <(field median_step_s <"$tmp/torch") |
    awk '{printf "%.4f\n", $2 / $1}' >"$tmp/pr"
  pr=$(median <"$tmp/pr"); prmin=$(sort -g "$tmp/pr" | head -1); prmax=$(sort -g "$tmp/pr" | tail -1)
  paired=$(awk -v m="$pr" -v a="$prmin" -v b="$prmax" 'BEGIN {printf "%.2fx (%.2f-%.2f)", m, a, b}')
  # share of the FMA peak measured by rn-bench in each of its runs (median), for both programs
  # (the training FLOPs per image are the same model's: ours GFLOP/s / ours img/s)
  pk=$(field fma_peak_gflops <"$tmp/ours" | median); og=$(field gflops <"$tmp/ours" | median)
  osh=$(awk -v g="$og" -v p="$pk" 'BEGIN {printf("%.0f%%", (p > 0) ? 100 * g / p : 0)}')
  tsh=$(awk -v g="$og" -v a="$oi" -v b="$ti" -v p="$pk" 'BEGIN {printf("%.0f%%", (p > 0) ? 100 * g / a * b / p : 0)}')
  echo "== $model batch $batch threads $thr: per-run img/s ours: $(tr '\n' ' ' <"$tmp/oi")torch: $(tr '\n' ' ' <"$tmp/ti")ratios: $(awk '{printf "%.2f ", $1}' "$tmp/pr")"
  echo "== our per-layer table (last run):"
  sed -n '/^layer /,$p' "$tmp/last_ours.txt"
  echo
  printf "%-16s %5s %3s | %12s %12s %7s %20s | %7s MB %7s MB | %9s %9s %9s |%s\n" "$model" "$batch" "$thr" "$oi" "$ti" "${ratio}x" \
    "$paired" "$orss" "$trss" "$pk" "$osh" "$tsh" "$loads" >>"$summary"
done
echo "== side by side (medians of $R alternating runs each, ratio = ours/torch of the medians, paired = median of the"
echo "   $R per-run ratios and their range; training step = forward, loss, backward, SGD)"
cat "$summary"
