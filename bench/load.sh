#!/usr/bin/env bash
# Load benchmark: one round of 1,000 devices through a real `hearth-aggregator serve` (SQLite) on
# 127.0.0.1, then Flower's SecAgg+ on the same n, d and dropout (simulation mode), side by side
# with ratios. Arguments go to the bench (--devices N --dropout P --runs R --quiet-ms MS); add
# --no-flower to skip the peer. Flower lives in a venv under the build cache:
#   python3 -m venv ~/.cache/hearth/venv-flower
#   ~/.cache/hearth/venv-flower/bin/pip install -r bench/flower_requirements.txt
# Built with the dev profile the tests share (dependencies and hearth-core at opt-level 3).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/hearth/target}"
PY="${HEARTH_FLOWER_PYTHON:-$HOME/.cache/hearth/venv-flower/bin/python}"
ARGS=()
FLOWER=1
for a in "$@"; do
  if [ "$a" = "--no-flower" ]; then FLOWER=0; else ARGS+=("$a"); fi
done
if [ "$FLOWER" = 1 ]; then
  [ -x "$PY" ] || { echo "no Flower venv at $PY (see the top of this script, or pass --no-flower)" >&2; exit 1; }
  ARGS+=(--flower "$PY")
fi
exec cargo bench --locked -q --profile dev -p hearth-aggregator --bench load -- "${ARGS[@]}"
