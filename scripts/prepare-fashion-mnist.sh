#!/bin/sh
# Converts Debian's Fashion-MNIST (/usr/share/datasets/fashion-mnist) into HDF5 shards.
# usage: scripts/prepare-fashion-mnist.sh [build_dir (default build)] [out_dir (default datasets/fashion-mnist)]
# Idempotent: does nothing if out_dir already holds both manifests. Converts into a temporary
# directory next to out_dir and renames it into place, so a half-done conversion is never taken
# for a finished one.
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$here/build}
out=${2:-$here/datasets/fashion-mnist}
src=${RN_FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}
if [ -f "$out/train.manifest" ] && [ -f "$out/test.manifest" ]; then
  echo "prepare-fashion-mnist: $out already converted"
  exit 0
fi
if [ -e "$out" ]; then
  echo "prepare-fashion-mnist: error: $out exists but is incomplete (no train/test manifest); remove it" >&2
  exit 1
fi
conv=$build/rn-convert-idx
if [ ! -x "$conv" ]; then
  echo "prepare-fashion-mnist: error: $conv not found; build first (cmake --build $build)" >&2
  exit 1
fi
for f in train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz; do
  if [ ! -f "$src/$f" ]; then
    echo "prepare-fashion-mnist: error: $src/$f missing (apt-get install dataset-fashion-mnist)" >&2
    exit 1
  fi
done
mkdir -p "$(dirname "$out")"
tmp=$(mktemp -d "$out.tmp.XXXXXX")
trap 'rm -rf "$tmp"' EXIT INT TERM
"$conv" --names fashion --per-shard 20000 "$tmp" \
  "$src/train-images-idx3-ubyte.gz" "$src/train-labels-idx1-ubyte.gz" \
  "$src/t10k-images-idx3-ubyte.gz" "$src/t10k-labels-idx1-ubyte.gz"
chmod 755 "$tmp"
mv "$tmp" "$out"
trap - EXIT INT TERM
echo "prepare-fashion-mnist: wrote $out"
