#!/usr/bin/env bash
# Builds the edge worker for workerd: cargo (wasm32) -> wasm-bindgen (--target web) -> an entry
# module that instantiates it synchronously. Output: $HEARTH_EDGE_OUT (relative to the repository
# root), by default $CARGO_TARGET_DIR/edge/; crates/edge-worker/wrangler.toml builds into
# crates/edge-worker/build/.
source "$(dirname "$0")/setup.sh"
cargo build --locked -p hearth-edge --target wasm32-unknown-unknown --profile wasm-release
OUT="${HEARTH_EDGE_OUT:-$CARGO_TARGET_DIR/edge}"
rm -rf "$OUT" && mkdir -p "$OUT"
wasm-bindgen --target web --no-typescript --out-dir "$OUT" --out-name hearth_edge \
  "$CARGO_TARGET_DIR/wasm32-unknown-unknown/wasm-release/hearth_edge.wasm"
cp crates/edge-worker/entry.mjs "$OUT/entry.mjs"
ls -l "$OUT"
