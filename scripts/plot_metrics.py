#!/usr/bin/python3
"""Plots training curves from rn-train's metrics.jsonl files to a PNG, in the style of the
figures of He et al. 2015: training error (thin) and validation error (bold) against iterations.

Usage: plot_metrics.py OUT.png RUN_DIR_OR_METRICS [LABEL=]RUN... [--title T] [--loss]
Each run is an rn-train output directory (its metrics.jsonl is read) or a metrics.jsonl path; give
LABEL=PATH to name a curve (default: the directory name). --loss adds a panel of the training loss.
"""
import argparse
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def load(path):
    if os.path.isdir(path):
        path = os.path.join(path, "metrics.jsonl")
    train, val = [], []
    with open(path) as f:
        for ln, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                r = json.loads(line)
            except json.JSONDecodeError as exc:
                sys.exit(f"plot_metrics: {path} line {ln}: not JSON ({exc})")
            if r.get("type") == "train":
                train.append((r["step"], r["err"], r["loss"]))
            elif r.get("type") == "val":
                val.append((r["step"], r["top1_err"]))
    if not train and not val:
        sys.exit(f"plot_metrics: {path}: no train or val records")
    return train, val


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--title", default="")
    ap.add_argument("--loss", action="store_true")
    a = ap.parse_args()
    panels = 2 if a.loss else 1
    fig, axes = plt.subplots(1, panels, figsize=(7 * panels, 4.5), squeeze=False)
    ax = axes[0][0]
    for i, spec in enumerate(a.runs):
        label, path = spec.split("=", 1) if "=" in spec and not os.path.exists(spec) else (None, spec)
        label = label or os.path.basename(os.path.normpath(path if os.path.isdir(path) else os.path.dirname(path) or "."))
        train, val = load(path)
        color = f"C{i % 10}"
        if train:
            ax.plot([t[0] for t in train], [100 * t[1] for t in train], color=color, lw=0.8, alpha=0.8,
                    label=f"{label} train")
        if val:
            ax.plot([v[0] for v in val], [100 * v[1] for v in val], color=color, lw=2.2, marker="o", ms=3,
                    label=f"{label} test")
        if a.loss and train:
            axes[0][1].plot([t[0] for t in train], [t[2] for t in train], color=color, lw=1, label=label)
    ax.set_xlabel("iterations")
    ax.set_ylabel("error (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if a.title:
        ax.set_title(a.title)
    if a.loss:
        axes[0][1].set_xlabel("iterations")
        axes[0][1].set_ylabel("training loss")
        axes[0][1].set_yscale("log")
        axes[0][1].grid(alpha=0.3)
        axes[0][1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(a.out, dpi=120)
    print(f"plot_metrics: wrote {a.out}")


if __name__ == "__main__":
    main()
