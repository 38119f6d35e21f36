#!/bin/sh
# Loader throughput on one prefetch thread (issue: the loader must keep ahead of training):
# Fashion-MNIST (raw shards, CIFAR-style augmentation) and an ImageNet-like JPEG set made here
# (N synthetic 500x375 JPEGs, stored as JPEG bytes, paper's scale augmentation to 224).
# usage: scripts/bench_loader.sh [BUILD_DIR] [N_JPEG]
set -eu
cd "$(dirname "$0")/.."
B=${1:-build}
N=${2:-1024}
T=$(mktemp -d "${TMPDIR:-/tmp}/rn-bench-loader-XXXXXX")
trap 'rm -rf "$T"' EXIT
[ -f datasets/fashion-mnist/train.manifest ] || sh scripts/prepare-fashion-mnist.sh "$B" datasets/fashion-mnist
taskset -c 0 "$B/rn-bench-loader" --data datasets/fashion-mnist --aug cifar --batch 128 --steps 200
/usr/bin/python3 - "$T/tree" "$N" <<'PY'
import os, sys, torch
from torchvision.io import encode_jpeg, write_file
root, n = sys.argv[1], int(sys.argv[2])
g = torch.Generator().manual_seed(0)
for i in range(n):
    d = os.path.join(root, "c%02d" % (i % 10)); os.makedirs(d, exist_ok=True)
    # smooth random image (compresses like a photo, ~60-120 KB)
    x = torch.nn.functional.interpolate(torch.rand(1, 3, 24, 32, generator=g), size=(375, 500), mode="bicubic")
    x = (x[0].clamp(0, 1) * 255 + torch.rand(3, 375, 500, generator=g) * 24).clamp(0, 255).to(torch.uint8)
    write_file(os.path.join(d, "img%05d.JPEG" % i), encode_jpeg(x, quality=90))
PY
"$B/rn-convert-jpeg" --keep-jpeg --quiet "$T/shards" "$T/tree"
for aug in imagenet-paper imagenet-torch; do
  taskset -c 0 "$B/rn-bench-loader" --data "$T/shards" --aug $aug --crop 224 --batch 32 --steps 30
done
