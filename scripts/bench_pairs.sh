#!/bin/bash
# Paired A/B of two settings in alternating processes: runs `rn-bench --layers 1` with the
# environment settings A and B one after the other, PAIRS times (A B A B ...), and prints each
# setting's median and the median of the per-pair B/A ratios (with their range) for the step, the
# convolutions, the other layers and each -g group of layers (a regular expression over "name op" of
# the per-layer table, e.g. 'layer3\.[1-5]\.bn3' or 'bn\+add\+relu').
#
# Use it for switches that change the plan (a second model in `rn-bench --ab`): two models in one
# process do not run alike even with identical plans (an A/A gave the on model's non-conv layers
# 0.91-0.99 of the off model's time), while separate processes start alike.
#
#   scripts/bench_pairs.sh [-n PAIRS] [-b BUILD] [-B BUILD_B] [-g REGEX]... 'A-ENV' 'B-ENV' [rn-bench args]
#   scripts/bench_pairs.sh -n 4 -g 'bn\+add\+relu' 'RN_DX_OVER_X=0' '' --steps 3 --warmup 1
#   scripts/bench_pairs.sh -n 6 -b /tmp/base/build -B build '' '' --model cifar-resnet56 --batch 128
#
# -B: B runs BUILD_B's rn-bench (default: BUILD's), to compare a code change that has no run-time
# switch against a build of the code before it (e.g. a git worktree of the previous commit).
#
# A-ENV / B-ENV: space-separated VAR=value settings ('' = the defaults). rn-bench args default to
# ResNet-50 b32, 3 timed steps after 1 warm-up. Logs: $TMPDIR/bench_pairs.XXXX (kept).
set -u
pairs=4 build=build buildb= groups=()
usage() { echo "usage: $0 [-n PAIRS] [-b BUILD] [-B BUILD_B] [-g REGEX]... 'A-ENV' 'B-ENV' [rn-bench args]" >&2; exit 2; }
while getopts "n:b:B:g:h" o; do
  case $o in
    n) pairs=$OPTARG ;;
    b) build=$OPTARG ;;
    B) buildb=$OPTARG ;;
    g) groups+=("$OPTARG") ;;
    *) usage ;;
  esac
done
shift $((OPTIND - 1))
[ $# -ge 2 ] || usage
case $pairs in '' | *[!0-9]* | 0) echo "$0: option -n: '$pairs' is not a number of pairs (1 or more)" >&2; exit 2 ;; esac
[ -x "$build/rn-bench" ] || { echo "$0: option -b: no executable $build/rn-bench" >&2; exit 2; }
[ -n "$buildb" ] || buildb=$build
[ -x "$buildb/rn-bench" ] || { echo "$0: option -B: no executable $buildb/rn-bench" >&2; exit 2; }
A=$1 B=$2
shift 2
args=("$@")
[ ${#args[@]} -gt 0 ] || args=(--steps 3 --warmup 1)
for s in $A $B; do
  case $s in *=*) ;; *) echo "$0: setting '$s' is not VAR=value" >&2; exit 2 ;; esac
done
dir=$(mktemp -d "${TMPDIR:-/tmp}/bench_pairs.XXXX")
[ "$buildb" = "$build" ] || echo "bench_pairs: A runs $build/rn-bench, B runs $buildb/rn-bench"
echo "bench_pairs: A='$A' B='$B', $pairs pairs of: rn-bench --layers 1 ${args[*]} (logs in $dir)"
for i in $(seq 1 "$pairs"); do
  for side in A B; do
    set_=$A bin=$build/rn-bench
    [ $side = B ] && set_=$B bin=$buildb/rn-bench
    # shellcheck disable=SC2086 # the settings are words
    env $set_ "$bin" --layers 1 "${args[@]}" > "$dir/$side.$i.log" 2>&1 ||
      { echo "$0: rn-bench ($side, pair $i) failed:" >&2; tail -5 "$dir/$side.$i.log" >&2; exit 1; }
  done
  echo "pair $i: step A $(grep -o 'step median [0-9.]* ms' "$dir/A.$i.log" | cut -d' ' -f3) ms, B $(grep -o 'step median [0-9.]* ms' "$dir/B.$i.log" | cut -d' ' -f3) ms"
done
python3 - "$dir" "$pairs" "${groups[@]}" <<'EOF'
import re, statistics as st, sys
d, n, groups = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
def load(f):
    t, step = {}, None
    for l in open(f):
        m = re.match(r'step median ([\d.]+) ms', l)
        if m: step = float(m.group(1))
        p = l.split()
        # per-layer rows: name op shape fwd_ms bwd_ms [...]
        if len(p) >= 5 and re.match(r'\d+x\d+x\d+$', p[2]):
            try: t[p[0] + ' ' + p[1]] = t.get(p[0] + ' ' + p[1], 0.0) + float(p[3]) + float(p[4])
            except ValueError: pass
    if step is None or not t: sys.exit(f'bench_pairs: no step median or per-layer table in {f}')
    return step, t
runs = {s: [load(f'{d}/{s}.{i}.log') for i in range(1, n + 1)] for s in 'AB'}
def row(name, pick):
    a = [pick(r) for r in runs['A']]; b = [pick(r) for r in runs['B']]
    r = [y / x if x > 0 else float('nan') for x, y in zip(a, b)]
    print(f'{name:44s} {st.median(a):10.1f} {st.median(b):10.1f}   {st.median(r):.3f} ({min(r):.3f}-{max(r):.3f})')
print(f'{"(ms; medians of " + str(n) + " runs each)":44s} {"A":>10s} {"B":>10s}   B/A paired (range)')
row('step', lambda r: r[0])
row('convolutions (conv)', lambda r: sum(v for k, v in r[1].items() if k.endswith(' conv')))
row('other layers (not conv, not linear)', lambda r: sum(v for k, v in r[1].items() if not k.endswith((' conv', ' linear'))))
for g in groups:
    rx = re.compile(g)
    k = [k for k in runs['A'][0][1] if rx.search(k)]
    if not k: sys.exit(f"bench_pairs: group '{g}' matches no layer")
    row(f'{g} ({len(k)} layers)', lambda r, k=k: sum(r[1].get(x, 0.0) for x in k))
EOF
