#!/bin/bash
# unit: scripts/plot_metrics.py turns metrics.jsonl into a PNG (checked by its signature and size),
# and rejects a malformed file with a message naming the file and line.
set -u
SRC=$1
T=$(mktemp -d "${TMPDIR:-/tmp}/rn-plot-XXXXXX")
trap 'rm -rf "$T"' EXIT
mkdir -p "$T/run"
for s in 10 20 30 40; do
  echo "{\"type\":\"train\",\"epoch\":0,\"step\":$s,\"loss\":$((50 - s)).5,\"err\":0.$((90 - s)),\"lr\":0.1}" >>"$T/run/metrics.jsonl"
done
echo '{"type":"val","epoch":1,"step":40,"top1_err":0.3,"top5_err":0.05,"loss":0.9}' >>"$T/run/metrics.jsonl"
/usr/bin/python3 "$SRC/scripts/plot_metrics.py" "$T/out.png" "$T/run" --loss || { echo "FAIL: plot failed"; exit 1; }
sig=$(head -c 8 "$T/out.png" | od -An -tx1 | tr -d ' \n')
[ "$sig" = "89504e470d0a1a0a" ] || { echo "FAIL: $T/out.png is not a PNG (signature $sig)"; exit 1; }
[ "$(stat -c %s "$T/out.png")" -gt 10000 ] || { echo "FAIL: PNG suspiciously small"; exit 1; }
echo 'not json' >"$T/bad.jsonl"
if msg=$(/usr/bin/python3 "$SRC/scripts/plot_metrics.py" "$T/bad.png" "$T/bad.jsonl" 2>&1); then
  echo "FAIL: malformed metrics accepted"; exit 1
fi
echo "$msg" | grep -q "bad.jsonl line 1" || { echo "FAIL: message does not name file and line: $msg"; exit 1; }
[ ! -e "$T/bad.png" ] || { echo "FAIL: output written for bad input"; exit 1; }
echo "tools_plot: 4 passed, 0 failed"
