#!/usr/bin/python3
"""Tiny deterministic learnable data sets for the end-to-end training tests.

Raw (default): writes IDX files (train/test images + labels) and converts them with the
project's rn-convert-idx into OUT (train.manifest, test.manifest, shards).
JPEG (--jpeg): writes a class-directory tree of JPEGs (PIL) plus a test directory with a labels
file and converts them with rn-convert-jpeg --keep-jpeg (splits 'train' and 'test').

Each class k has a fixed random template (from --seed); a sample is its class template plus
Gaussian noise, clipped to 0..255, so a tiny ResNet learns it in a few steps. Same seed, same bytes.

usage: make_tiny_data.py --convert BIN OUT [--ntrain 512] [--ntest 128] [--size 12]
                         [--classes 10] [--per-shard 200] [--seed 7] [--jpeg]
"""
import argparse
import os
import struct
import subprocess
import sys

import numpy as np


def images(rng, templates, n, size):
    classes = templates.shape[0]
    labels = (np.arange(n) % classes).astype(np.uint8)
    rng.shuffle(labels)
    noise = rng.normal(0.0, 40.0, size=(n, size, size))
    x = np.clip(templates[labels] + noise, 0, 255).astype(np.uint8)
    return x, labels


def write_idx(path, arr):
    with open(path, "wb") as f:
        if arr.ndim == 3:
            f.write(struct.pack(">I", 0x00000803))
            f.write(struct.pack(">III", *arr.shape))
        else:
            f.write(struct.pack(">I", 0x00000801))
            f.write(struct.pack(">I", arr.shape[0]))
        f.write(arr.tobytes())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--convert", required=True, help="path of rn-convert-idx (or rn-convert-jpeg with --jpeg)")
    ap.add_argument("--ntrain", type=int, default=512)
    ap.add_argument("--ntest", type=int, default=128)
    ap.add_argument("--size", type=int, default=12)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--per-shard", type=int, default=200)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--jpeg", action="store_true")
    a = ap.parse_args()

    rng = np.random.default_rng(a.seed)
    templates = rng.uniform(0, 255, size=(a.classes, a.size, a.size))
    xtr, ytr = images(rng, templates, a.ntrain, a.size)
    xte, yte = images(rng, templates, a.ntest, a.size)
    src = a.out + ".src"
    os.makedirs(src, exist_ok=True)

    if not a.jpeg:
        files = []
        for name, arr in (("train-images-idx3-ubyte", xtr), ("train-labels-idx1-ubyte", ytr),
                          ("t10k-images-idx3-ubyte", xte), ("t10k-labels-idx1-ubyte", yte)):
            p = os.path.join(src, name)
            write_idx(p, arr)
            files.append(p)
        cmd = [a.convert, "--quiet", "--per-shard", str(a.per_shard), "--classes", str(a.classes), a.out] + files
    else:
        from PIL import Image
        tr = os.path.join(src, "train")
        te = os.path.join(src, "test")
        for k in range(a.classes):
            os.makedirs(os.path.join(tr, "c%02d" % k), exist_ok=True)
        os.makedirs(te, exist_ok=True)
        for i in range(a.ntrain):
            Image.fromarray(xtr[i], "L").save(os.path.join(tr, "c%02d" % ytr[i], "%05d.jpg" % i), quality=95)
        with open(os.path.join(src, "test_labels.txt"), "w") as f:
            for i in range(a.ntest):
                Image.fromarray(xte[i], "L").save(os.path.join(te, "%05d.jpg" % i), quality=95)
                f.write("%05d.jpg %d\n" % (i, yte[i]))
        cmd = [a.convert, "--quiet", "--keep-jpeg", "--threads", "1", "--per-shard", str(a.per_shard),
               "--val-split", "test", a.out, tr, te, os.path.join(src, "test_labels.txt")]
    r = subprocess.run(cmd)
    if r.returncode != 0:
        sys.exit("make_tiny_data.py: %s failed with exit %d" % (" ".join(cmd), r.returncode))


if __name__ == "__main__":
    main()
