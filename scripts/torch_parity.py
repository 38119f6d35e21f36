#!/usr/bin/python3
"""PyTorch parity, Python half (see tests/test_model_parity.c for the exchange file).

Loads the C model's weights into torchvision's resnet18/34/50/101/152 (conv1 rebuilt for a
non-3-channel input) or a CIFAR ResNet (option A: LambdaLayer subsampling ::2 and padding
planes//4 channels on each side), runs the same training step in float64 and compares
training logits, loss, every parameter gradient, updated BN running statistics and eval logits.
Prints the max relative error (max|ours - torch| / max|torch|) per quantity; exits 1 above the
tolerance (default 1e-3).

usage: torch_parity.py FILE.h5 [--tol 1e-3] [--envelope 3] [--samples 4] [--perturb 1e-6] [--threads 2]
A gradient tensor beyond the tolerance still passes within --envelope times PyTorch float32's
worst error on it over 1 + --samples runs (the input as is, and perturbed by --perturb relative):
see the comment in main. Environment: PARITY_VERBOSE=1 lists each gradient tensor beyond the
tolerance with its error and each PyTorch float32 run's.
"""
import argparse
import re
import os
import sys

import h5py
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision


class LambdaLayer(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


class CifarBasicBlock(nn.Module):
    def __init__(self, cin, planes, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != planes:
            p = planes // 4
            self.shortcut = LambdaLayer(lambda x: F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, p, p)))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """He et al. 2015 section 4.2: 6n+2 layers, widths 16/32/64, option A shortcuts."""

    def __init__(self, depth, num_classes, in_channels=3):
        super().__init__()
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        cin = 16
        for s, planes in enumerate((16, 32, 64)):
            blocks = []
            for j in range(n):
                stride = 2 if s > 0 and j == 0 else 1
                blocks.append(CifarBasicBlock(cin, planes, stride))
                cin = planes
            setattr(self, "layer%d" % (s + 1), nn.Sequential(*blocks))
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(out)


def make_model(arch, num_classes, in_channels):
    m = re.fullmatch(r"cifar-resnet(\d+)", arch)
    if m:
        return CifarResNet(int(m.group(1)), num_classes, in_channels)
    m = re.fullmatch(r"resnet(18|34|50|101|152)", arch)
    if not m:
        sys.exit("torch_parity: architecture %s has no torch reference here" % arch)
    model = getattr(torchvision.models, arch)(num_classes=num_classes)
    if in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
    return model


def rel(ours, ref):
    ours = np.asarray(ours, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if ours.shape != ref.shape:
        return float("inf")
    scale = max(float(np.abs(ref).max()) if ref.size else 0.0, 1e-12)
    return float(np.abs(ours - ref).max()) / scale


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("file")
    ap.add_argument("--tol", type=float, default=1e-3)
    ap.add_argument("--envelope", type=float, default=3.0,
                    help="an ill-conditioned gradient tensor also passes within this multiple of PyTorch "
                         "float32's own error against float64")
    ap.add_argument("--samples", type=int, default=4,
                    help="PyTorch float32 runs on a perturbed input added to the envelope's sample")
    ap.add_argument("--perturb", type=float, default=1e-6,
                    help="relative size of those runs' input perturbation")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    f = h5py.File(a.file, "r")
    arch = f.attrs["arch"]
    arch = arch.decode() if isinstance(arch, bytes) else str(arch)
    classes = int(f.attrs["num_classes"])
    model = make_model(arch, classes, int(f.attrs["in_channels"])).double()

    sd = model.state_dict()
    ours = {k: torch.from_numpy(np.array(f["param"][k])).double() for k in f["param"]}
    missing = [k for k in sd if k not in ours and not k.endswith("num_batches_tracked")]
    extra = [k for k in ours if k not in sd]
    if missing or extra:
        print("torch_parity: key mismatch: missing %s, unexpected %s" % (missing[:5], extra[:5]))
        return 1
    for k, v in ours.items():
        if tuple(sd[k].shape) != tuple(v.shape):
            print("torch_parity: %s: shape %s, torch has %s" % (k, tuple(v.shape), tuple(sd[k].shape)))
            return 1
    model.load_state_dict(ours, strict=False)

    x = torch.from_numpy(np.array(f["input"])).double()
    y = torch.from_numpy(np.array(f["labels"]).astype(np.int64))
    # PyTorch's own float32 step, as the measure of what float32 can do on each gradient tensor.
    # Two effects make some tensors lose digits whoever computes them: gradients of a conv feeding
    # a BN in the last stage are ill-conditioned (after the global average pool dy is nearly
    # constant per channel and BN backward subtracts its mean), and at 224 pixels a few of the
    # millions of ReLU inputs and max-pool candidates lie within float32 rounding of their kink or
    # tie, so float32 and float64 take different branches there and every gradient upstream moves
    # (at batch 2, by up to a few 1e-2). Which kinks flip depends on the summation order of every
    # layer before them, so one float32 run is a single draw: the envelope is the worst of
    # PyTorch's float32 run on the input and --samples runs on the input perturbed by --perturb
    # (relative, uniform; about the rounding a float32 forward accumulates), each against the
    # float64 truth at the unperturbed input. A gradient tensor passes if it is within the
    # tolerance of the float64 truth, or no further from it than --envelope times that worst.
    def grads32(xin):
        m32 = make_model(arch, classes, int(f.attrs["in_channels"]))
        m32.load_state_dict({k: v.float() for k, v in ours.items()}, strict=False)
        m32.train()
        F.cross_entropy(m32(xin), y).backward()
        return {n: p.grad.double().numpy() for n, p in m32.named_parameters()}

    g32s = [grads32(x.float())]
    gen = torch.Generator().manual_seed(20261129)
    for _ in range(a.samples):
        u = torch.rand(x.shape, generator=gen, dtype=torch.float64) * 2 - 1
        g32s.append(grads32((x * (1 + a.perturb * u)).float()))
    model.train()
    model.zero_grad()
    logits = model(x)
    loss = F.cross_entropy(logits, y)
    loss.backward()

    print("torch_parity %s: %s, input %s, %d classes, torch %s float64 reference" %
          (a.file, arch, tuple(x.shape), classes, torch.__version__))
    results = []
    results.append(("logits (train)", rel(f["out/logits_train"], logits.detach().numpy())))
    results.append(("loss", rel(f["out/loss"], np.array([loss.item()]))))
    worst_g, worst_name, ng, worst_t32, worst_excess, n_env = 0.0, "", 0, 0.0, 0.0, 0
    for name, p in model.named_parameters():
        e = rel(f["grad"][name], p.grad.numpy())
        e32s = [rel(g[name], p.grad.numpy()) for g in g32s]
        e32 = max(e32s)
        ng += 1
        worst_t32 = max(worst_t32, e32)
        if e > a.tol:
            n_env += 1
            if os.environ.get("PARITY_VERBOSE"):
                print("    beyond tol: %-36s %.3e torch32 %s" % (name, e, " ".join("%.3e" % v for v in e32s)))
            worst_excess = max(worst_excess, e / max(a.envelope * e32, 1e-30))
        if e > worst_g or worst_name == "":
            worst_g, worst_name = e, name
    if ng != len(f["grad"]):
        print("torch_parity: %d gradients in file, torch has %d parameters" % (len(f["grad"]), ng))
        return 1
    print("  %-52s max rel err %.3e  (PyTorch float32, worst of %d runs: %.3e)" %
          ("gradients (%d tensors, worst %s)" % (ng, worst_name), worst_g, len(g32s), worst_t32))
    results.append(("gradients: %d tensors beyond tol, worst ours/(%g x torch32)" % (n_env, a.envelope),
                    worst_excess * a.tol))
    # relative to the whole gradient vector: the figure that matters for an SGD step
    num = max(float(np.abs(np.array(f["grad"][n]) - p.grad.numpy()).max()) for n, p in model.named_parameters())
    den = max(float(np.abs(p.grad.numpy()).max()) for _, p in model.named_parameters())
    print("  %-52s max rel err %.3e" % ("gradients (vs global max |grad|)", num / den))
    worst_s, nb = 0.0, 0
    for name, b in model.named_buffers():
        if name.endswith("num_batches_tracked"):
            continue
        nb += 1
        worst_s = max(worst_s, rel(f["after"][name], b.numpy()))
    results.append(("running stats (%d buffers)" % nb, worst_s))
    model.eval()
    with torch.no_grad():
        logits_eval = model(x)
    results.append(("logits (eval)", rel(f["out/logits_eval"], logits_eval.numpy())))

    bad = 0
    for what, e in results:
        flag = "ok" if e <= a.tol else "FAIL"
        bad += e > a.tol
        print("  %-52s max rel err %.3e  %s" % (what, e, flag))
    print("torch_parity: %s (tolerance %.1e)" % ("FAILED" if bad else "passed", a.tol))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
