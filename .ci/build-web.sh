#!/usr/bin/env bash
# Builds the browser package: cargo (wasm32, size profile) -> wasm-bindgen (--target web, with
# TypeScript definitions). Output: $CARGO_TARGET_DIR/web/pkg/ (hearth_web.js, hearth_web_bg.wasm,
# hearth_web.d.ts); prints raw and gzip sizes of the wasm.
source "$(dirname "$0")/setup.sh"
cargo build --locked -p hearth-web --target wasm32-unknown-unknown --profile wasm-release
OUT="$CARGO_TARGET_DIR/web/pkg"
rm -rf "$OUT" && mkdir -p "$OUT"
wasm-bindgen --target web --out-dir "$OUT" --out-name hearth_web \
  "$CARGO_TARGET_DIR/wasm32-unknown-unknown/wasm-release/hearth_web.wasm"
printf 'hearth_web_bg.wasm: %s bytes raw, %s bytes gzip -9\n' \
  "$(wc -c < "$OUT/hearth_web_bg.wasm")" "$(gzip -9 -c "$OUT/hearth_web_bg.wasm" | wc -c)"
