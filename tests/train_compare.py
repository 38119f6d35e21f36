#!/usr/bin/python3
"""train_compare.py A.h5 B.h5 TOL [--params-only] [--no-buffers]: compares two checkpoints.

For every dataset under /model (floating point; integer counters must be equal) and, unless
--params-only, /optim/momentum (--no-buffers: skip BN running_mean/running_var/num_batches_tracked): relative error max|a-b| / max(max|b|, 1e-3) per dataset.
Prints the worst dataset and its error; exit 0 iff the two files hold the same dataset names and
shapes and every error <= TOL; 1 otherwise; 2 on unreadable files.
"""
import sys

import h5py
import numpy as np


BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def collect(f, params_only, no_buffers=False):
    out = {}
    groups = ["model"] + ([] if params_only else ["optim/momentum"])
    for g in groups:
        if g not in f:
            continue
        for name, ds in f[g].items():
            if no_buffers and name.endswith(BUFFERS):
                continue
            if isinstance(ds, h5py.Dataset):
                out[g + "/" + name] = ds[()]
    return out


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    params_only = "--params-only" in sys.argv
    if len(args) != 3:
        print(__doc__.strip().splitlines()[0])
        return 2
    a_path, b_path, tol = args[0], args[1], float(args[2])
    try:
        with h5py.File(a_path, "r") as fa, h5py.File(b_path, "r") as fb:
            nb = "--no-buffers" in sys.argv
            a = collect(fa, params_only, nb)
            b = collect(fb, params_only, nb)
    except OSError as ex:
        print("cannot read: %s" % ex)
        return 2
    if not a:
        print("%s: no datasets under /model" % a_path)
        return 1
    if set(a) != set(b):
        print("dataset sets differ: only in A %s, only in B %s" % (sorted(set(a) - set(b))[:5], sorted(set(b) - set(a))[:5]))
        return 1
    worst, worst_name = 0.0, None
    for k in sorted(a):
        x, y = np.asarray(a[k]), np.asarray(b[k])
        if x.shape != y.shape:
            print("%s: shape %s vs %s" % (k, x.shape, y.shape))
            return 1
        if not np.issubdtype(x.dtype, np.floating):
            if not np.array_equal(x, y):
                print("%s: integer values differ: %s vs %s" % (k, x, y))
                return 1
            continue
        x64, y64 = x.astype(np.float64), y.astype(np.float64)
        if not (np.all(np.isfinite(x64)) and np.all(np.isfinite(y64))):
            print("%s: non-finite values" % k)
            return 1
        scale = max(float(np.max(np.abs(y64))) if y64.size else 0.0, 1e-3)
        err = float(np.max(np.abs(x64 - y64))) / scale if x64.size else 0.0
        if err >= worst:
            worst, worst_name = err, k
    verdict = "<=" if worst <= tol else ">"
    print("max relative error %.3g (%s) %s tolerance %g over %d datasets" % (worst, worst_name, verdict, tol, len(a)))
    return 0 if worst <= tol else 1


if __name__ == "__main__":
    sys.exit(main())
