# mpi: data-parallel equivalence. With --bn-eval 1 (BN on running statistics, so the math does not
# depend on how the batch is split) and --aug none, P ranks x B images reach the same parameters and
# momentum after K steps as 1 rank with the global batch P*B (--batch is global), for P = 2, 4,
# with --overlap 1 and 0 (and the communication thread) and small buckets (--bucket-mb 0.01: many buckets). Tolerance TOL = 1e-5 relative (measured ~3e-7; float32
# summation order differs). Negative control: the same comparison with --bn-eval 0 (batch statistics
# per rank) must exceed TOL, so the comparison can fail. Also: --recompute 0 (every activation kept)
# gives the same bits as the default (BN/add outputs recomputed in the backward), and so does a
# --recompute-mb budget that keeps some of them.
source "$(dirname "$0")/train_common.sh"
TOL=1e-5
K=8
make_data "$DATA"
EQ=(--bn-eval 1 --aug none --batch 32 --steps $K --bucket-mb 0.01 --val-split "" --resume none)
train_ok 1 "$WORK/ref.log" "${EQ[@]}" --out "$WORK/ref"
REF=$(latest_ckpt "$WORK/ref")
for np in 2 4; do
  for ov in 1 0; do
    train_ok $np "$WORK/p$np-o$ov.log" "${EQ[@]}" --overlap $ov --out "$WORK/p$np-o$ov" --check-replicas-every 1
    grep -q "global batch 32 ($((32 / np)) per rank)" "$WORK/p$np-o$ov.log" || fail "P=$np: global batch line missing"
    close_ckpt "$(latest_ckpt "$WORK/p$np-o$ov")" "$REF" $TOL "P=$np overlap=$ov vs 1 rank (K=$K steps)"
  done
  # the communication thread (--comm-thread 1) drives the same overlapped buckets
  train_ok $np "$WORK/p$np-ct.log" "${EQ[@]}" --overlap 1 --comm-thread 1 --out "$WORK/p$np-ct" --check-replicas-every 1
  # overlap only changes when buckets are sent, not what is summed: same bits
  same_ckpt "$(latest_ckpt "$WORK/p$np-o1")" "$(latest_ckpt "$WORK/p$np-o0")" "P=$np overlap 1 vs 0"
  same_ckpt "$(latest_ckpt "$WORK/p$np-ct")" "$(latest_ckpt "$WORK/p$np-o0")" "P=$np comm thread vs overlap 0"
done
# Negative control: batch-statistics BN makes the split visible.
train_ok 1 "$WORK/nref.log" "${EQ[@]}" --bn-eval 0 --out "$WORK/nref"
# Recompute (the default) replays BN/add outputs in the backward: the same bits as keeping them.
train_ok 1 "$WORK/nrc.log" "${EQ[@]}" --bn-eval 0 --recompute 0 --out "$WORK/nrc"
nrep=$(sed -n 's/.*(\([0-9]*\) outputs recomputed in the backward[;)].*/\1/p' "$WORK/nref.log")
[ -n "$nrep" ] && [ "$nrep" -gt 0 ] || fail "recompute: no replayed outputs reported: $(grep -m1 'memory per rank' "$WORK/nref.log")"
grep -q "0 outputs recomputed in the backward: --recompute 0" "$WORK/nrc.log" || fail "--recompute 0: $(grep -m1 'memory per rank' "$WORK/nrc.log")"
same_ckpt "$(latest_ckpt "$WORK/nrc")" "$(latest_ckpt "$WORK/nref")" "--recompute 0 vs 1 ($nrep outputs recomputed)"
# A recompute budget keeps part of the replayed outputs (here 50 KB: 1 of the 3): the same bits again.
train_ok 1 "$WORK/nrb.log" "${EQ[@]}" --bn-eval 0 --recompute-mb 0.05 --out "$WORK/nrb"
nrb=$(sed -n 's/.*(\([0-9]*\) outputs recomputed in the backward; --recompute-mb 0.05: the rest kept[;)].*/\1/p' "$WORK/nrb.log")
[ -n "$nrb" ] && [ "$nrb" -gt 0 ] && [ "$nrb" -lt "$nrep" ] ||
  fail "--recompute-mb 0.05: not fewer replays than $nrep: $(grep -m1 'memory per rank' "$WORK/nrb.log")"
same_ckpt "$(latest_ckpt "$WORK/nrb")" "$(latest_ckpt "$WORK/nref")" "--recompute-mb 0.05 ($nrb of $nrep outputs recomputed) vs 0"
# The start-up line names the budget that keeps them all; with it nothing is replayed.
all=$(sed -n 's/.*; --recompute-mb \([0-9.]*\) keeps them all).*/\1/p' "$WORK/nref.log")
[ -n "$all" ] || fail "no budget that keeps them all in: $(grep -m1 'memory per rank' "$WORK/nref.log")"
train_ok 1 "$WORK/nra.log" "${EQ[@]}" --bn-eval 0 --recompute-mb "${all:-1}" --out "$WORK/nra"
grep -q "(0 outputs recomputed in the backward; --recompute-mb ${all:-1}: all kept)" "$WORK/nra.log" ||
  fail "--recompute-mb $all: $(grep -m1 'memory per rank' "$WORK/nra.log")"
same_ckpt "$(latest_ckpt "$WORK/nra")" "$(latest_ckpt "$WORK/nref")" "--recompute-mb $all (all kept) vs 0"
train_ok 2 "$WORK/nctl.log" "${EQ[@]}" --bn-eval 0 --out "$WORK/nctl"
if "$PY" "$SRC/tests/train_compare.py" "$(latest_ckpt "$WORK/nctl")" "$(latest_ckpt "$WORK/nref")" $TOL >"$WORK/nctl.txt"; then
  fail "negative control: with --bn-eval 0 P=2 matched 1 rank within $TOL ($(cat "$WORK/nctl.txt")): the comparison cannot tell"
else
  ok "negative control (--bn-eval 0 differs): $(cat "$WORK/nctl.txt")"
fi
# Synchronised BN: batch statistics over the global batch, so P ranks equal 1 rank again even with
# batch-statistics BN (the case the negative control shows to differ without it).
for np in 2 4; do
  train_ok $np "$WORK/sync$np.log" "${EQ[@]}" --bn-eval 0 --sync-bn 1 --out "$WORK/sync$np" --check-replicas-every 1
  close_ckpt "$(latest_ckpt "$WORK/sync$np")" "$(latest_ckpt "$WORK/nref")" $TOL "P=$np synchronised BN vs 1 rank"
done
finish
