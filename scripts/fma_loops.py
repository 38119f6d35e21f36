#!/usr/bin/env python3
"""Stack traffic in the innermost FMA loops of a compiled kernel (docs/PERF.md, twenty-seventh round).

usage: scripts/fma_loops.py FILE.s [FUNCTION-PREFIX]
FILE.s: the assembly of a kernel source, e.g.
  gcc -O3 -march=native -DNDEBUG -std=c11 -D_GNU_SOURCE -fopenmp -I include -S \
      -o /tmp/cd.s src/kernels/conv_direct.c
Finds every innermost loop (a backward jump to a label, no other loop inside) with at least four
FMAs and prints, per (FMAs in the loop, stack references in the loop), how many such loops there
are: an accumulator or pointer spilled in a hot loop shows as stack references (%rsp/%rbp).
With FUNCTION-PREFIX, only loops in functions whose name starts with it, listed one by one."""
import bisect
import collections
import re
import sys


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    lines = open(sys.argv[1]).read().split('\n')
    prefix = sys.argv[2] if len(sys.argv) > 2 else None
    labels = {}
    funcs = []
    for i, l in enumerate(lines):
        m = re.match(r'^(\.L\d+):', l)
        if m:
            labels[m.group(1)] = i
        elif re.match(r'^[A-Za-z_][\w.]*:$', l):
            funcs.append((i, l[:-1]))
    starts = [i for i, _ in funcs]
    loops = {}
    for i, l in enumerate(lines):
        m = re.match(r'^\s+j\w+\s+(\.L\d+)', l)
        if not m or m.group(1) not in labels:
            continue
        s = labels[m.group(1)]
        if s >= i:
            continue
        body = lines[s:i + 1]
        fma = sum('vfmadd' in b for b in body)
        if fma < 4:
            continue
        stack = sum('(%rsp)' in b or '(%rbp)' in b for b in body)
        if s not in loops or i < loops[s][1]:
            loops[s] = (s, i, fma, stack)
    inner = [r for r in loops.values() if not any(o[0] > r[0] and o[1] <= r[1] for o in loops.values())]
    count = collections.Counter()
    for s, e, fma, stack in sorted(inner):
        k = bisect.bisect_right(starts, s) - 1
        name = funcs[k][1] if k >= 0 else '?'
        if prefix is not None:
            if name.startswith(prefix):
                print('%-40s line %7d: %2d FMAs, %2d stack references' % (name, s + 1, fma, stack))
            continue
        count[(fma, stack)] += 1
    if prefix is None:
        print('FMAs per loop  stack refs  loops')
        for (fma, stack), n in sorted(count.items()):
            print('%13d %11d %6d' % (fma, stack, n))


if __name__ == '__main__':
    main()
