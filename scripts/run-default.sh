#!/bin/sh
# README command 1: install what is needed, build, convert Fashion-MNIST (Debian's
# dataset-fashion-mnist) to HDF5 shards once, and train the default job: a CIFAR-style ResNet-20 on
# Fashion-MNIST with 2 MPI ranks (preset fashion-mnist), printing validation accuracy.
# Extra arguments go to rn-train (e.g. --epochs 30, --resume none).
set -eu
cd "$(dirname "$0")/.."
sh scripts/install-deps.sh
sh scripts/build.sh build
sh scripts/prepare-fashion-mnist.sh build datasets/fashion-mnist
RANKS=${RN_RANKS:-2}
NCPU=$(nproc)
THREADS=$(( NCPU / RANKS )); [ "$THREADS" -ge 1 ] || THREADS=1
PROGRESS=""; [ -t 1 ] && PROGRESS="--progress bar"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
exec mpirun -n "$RANKS" --oversubscribe --bind-to none --mca mpi_yield_when_idle 1 \
  build/rn-train --preset fashion-mnist --threads "$THREADS" $PROGRESS "$@"
