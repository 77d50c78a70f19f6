#!/usr/bin/env bash
# hearth's secure-aggregation benchmark: one SecAgg+ round of 1,000 devices (by default) over the
# tower group's update, 10 % dropping after the masked input; per-device compute, the server's
# unmasking, the whole round, bytes against the plain update. Arguments go to the bench
# (--devices N, --dim D, --values V, --dropout P, --json). The same client in wasm32 (Node):
# bash bench/secagg.sh --wasm.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--wasm" ]; then
  source .ci/setup.sh >/dev/null
  CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner \
    exec cargo test --release --locked -p hearth-core --target wasm32-unknown-unknown --no-default-features --test wasm_secagg -- --nocapture
fi
exec cargo bench -q -p hearth-core --no-default-features --bench secagg -- "$@"
