#!/bin/sh
# Data-parallel scaling on this machine: images/s of a training step (synthetic data) with 1, 2 and
# 4 MPI ranks at a fixed global batch, each with the allreduce after backward (--overlap 0),
# overlapped and driven between layers (1), and by a communication thread (2), and the fraction of
# the exposed allreduce wait removed by overlapping (1 - exposed / exposed with --overlap 0; the
# exposed wait also contains the ranks' skew). Ranks x threads <= cores, except 4 ranks
# (oversubscribed).
# usage: [STEPS=8 WARMUP=2] scripts/bench_scaling.sh [BUILD_DIR] [MODEL] [GLOBAL_BATCH]
set -eu
cd "$(dirname "$0")/.."
B=${1:-build}
MODEL=${2:-cifar-resnet20}
G=${3:-128}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
NCPU=$(nproc)
printf "%-6s %-8s %-8s %-8s %10s %12s %14s %10s\n" ranks threads overlap batch img/s exposed_ms allreduce_ms hidden
for P in 1 2 4; do
  T=$(( NCPU / P )); [ "$T" -ge 1 ] || T=1
  for OV in 0 1 2; do
    [ "$P" = 1 ] && [ "$OV" != 0 ] && continue
    out=$(mpirun -n $P --oversubscribe --bind-to none --mca mpi_yield_when_idle 1 \
      "$B/rn-bench" --model "$MODEL" --batch $((G / P)) --threads $T --overlap $OV --steps ${STEPS:-8} --warmup ${WARMUP:-2} \
      --layers 0 2>&1)
    ips=$(echo "$out" | sed -n 's/.* img_s \([0-9.]*\) .*/\1/p')
    exp=$(echo "$out" | sed -n 's/.*allreduce wait \([0-9.]*\),.*/\1/p')
    alone=$(echo "$out" | sed -n 's/allreduce alone: .* in \([0-9.]*\) ms.*/\1/p')
    [ "$OV" = 0 ] && exp0=$exp
    hid=$(awk -v a="$exp" -v b="${exp0:-0}" -v o="$OV" 'BEGIN { if (o == 0 || b <= 0) print "-"; else printf "%.0f%%", 100 * (1 - a / b) }')
    printf "%-6s %-8s %-8s %-8s %10s %12s %14s %10s\n" $P $T $OV $((G / P)) "$ips" "$exp" "${alone:--}" "$hid"
  done
done
uptime
