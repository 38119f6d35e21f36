#!/usr/bin/python3
"""The PyTorch side of the benchmark: one training configuration, timed like rn-bench.

Usage: bench_torch.py MODEL BATCH THREADS [--size S] [--steps N] [--warmup W]
MODEL: resnet18|34|50|101|152 (torchvision) or cifar-resnet<6n+2> (option A, as in the paper).
Prints one line: 'torch MODEL batch B threads T: median_step_s S img_s I peak_rss_mb R'.
Run it through scripts/bench_vs_torch.sh, which preloads tcmalloc (glibc malloc costs PyTorch ~40%
here, shared/FACTS.md) and alternates it with our rn-bench.
"""
import argparse, resource, statistics, sys, time

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision


class LambdaLayer(nn.Module):
    def __init__(self, f):
        super().__init__()
        self.f = f

    def forward(self, x):
        return self.f(x)


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = LambdaLayer(lambda x: x)
        if stride != 1 or cin != cout:
            pad = (cout - cin) // 2
            self.shortcut = LambdaLayer(lambda x: F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, pad, cout - cin - pad)))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, depth, num_classes=10, in_ch=3):
        super().__init__()
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_ch, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers, cin = [], 16
        for i, w in enumerate((16, 32, 64)):
            blocks = []
            for j in range(n):
                blocks.append(BasicBlock(cin, w, 2 if (j == 0 and i > 0) else 1))
                cin = w
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("batch", type=int)
    ap.add_argument("threads", type=int)
    ap.add_argument("--size", type=int, default=0)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    if a.model.startswith("cifar-resnet"):
        net, size, classes = CifarResNet(int(a.model[len("cifar-resnet"):])), a.size or 32, 10
    else:
        net, size, classes = getattr(torchvision.models, a.model)(), a.size or 224, 1000
    net = net.to(memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(a.batch, 3, size, size).to(memory_format=torch.channels_last)
    y = torch.randint(0, classes, (a.batch,))
    times = []
    for i in range(a.warmup + a.steps):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        t = time.perf_counter() - t0
        if i >= a.warmup:
            times.append(t)
    med = statistics.median(times)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(f"torch {a.model} batch {a.batch} threads {a.threads}: median_step_s {med:.4f} "
          f"img_s {a.batch / med:.1f} peak_rss_mb {rss:.0f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
