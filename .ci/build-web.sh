#!/usr/bin/env bash
# Builds the browser's two wasm modules (wasm32, size profile) and runs wasm-bindgen on each
# (--target web, with TypeScript definitions), into $CARGO_TARGET_DIR/web/pkg/:
# - hearth_web: the page's first module (history, vault, user tower, int8 scoring, ranking);
# - hearth_train: the training worker's module (burn with WebGPU and CPU backends), loaded only
#   in a Web Worker when there is training to do.
# Prints raw and gzip sizes of both.
source "$(dirname "$0")/setup.sh"
cargo build --locked -p hearth-web -p hearth-train-web --target wasm32-unknown-unknown --profile wasm-release
OUT="$CARGO_TARGET_DIR/web/pkg"
rm -rf "$OUT" && mkdir -p "$OUT"
for m in hearth_web:hearth_web hearth_train_web:hearth_train; do
  wasm-bindgen --target web --out-dir "$OUT" --out-name "${m#*:}" \
    "$CARGO_TARGET_DIR/wasm32-unknown-unknown/wasm-release/${m%:*}.wasm"
  f="$OUT/${m#*:}_bg.wasm"
  printf '%s: %s bytes raw, %s bytes gzip -9\n' "$(basename "$f")" "$(wc -c < "$f")" "$(gzip -9 -c "$f" | wc -c)"
done
