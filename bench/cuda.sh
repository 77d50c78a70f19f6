#!/usr/bin/env bash
# CUDA beside the CPU: the same training (same seed, a fixed number of epochs) on --backend cpu
# and --backend cuda, then each model evaluated on the CPU. Prints the probe's answer, the train
# seconds per epoch of each, and both test reports; the metrics must agree within a few thousandths
# (float sums in another order). Meant for a machine with an NVIDIA GPU (the `device` tool's);
# elsewhere it stops after the probe says why CUDA cannot run. Usage: bash bench/cuda.sh [EPOCHS]
set -euo pipefail
cd "$(dirname "$0")/.."
EPOCHS="${1:-5}"
DATA="${HEARTH_DATA:-../shared/data/movielens-100k}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --release --locked -q -p hearth-aggregator
BIN="$CARGO_TARGET_DIR/release/hearth-aggregator"
echo "probe: $(HEARTH_PROBE=cuda "$BIN" || true)"
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT
for b in cpu cuda; do
  echo "== --backend $b, $EPOCHS epochs, seed 42"
  "$BIN" train --data "$DATA" --out "$OUT/$b" --backend "$b" --epochs "$EPOCHS" --patience 0 --seed 42 2> "$OUT/$b.log" > "$OUT/$b.txt" \
    || { tail -3 "$OUT/$b.log"; exit 1; }
  grep -E "^backend:|^trained in" "$OUT/$b.log"
  cat "$OUT/$b.txt"
done
secs() { sed -n 's/^trained in \([0-9.]*\) s.*/\1/p' "$OUT/$1.log"; }
awk -v c="$(secs cpu)" -v g="$(secs cuda)" -v e="$EPOCHS" \
  'BEGIN { printf "epoch time: cpu %.2f s, cuda %.2f s, cuda %.1fx faster\n", c / e, g / e, c / g }'
