#!/usr/bin/env bash
# Edge benchmark: builds the worker (.ci/build-edge.sh), then bench/edge.mjs: cached model files and
# `latest` from the worker in workerd beside a Node static server, p50/p99 and ratios, and the
# worker's size raw and gzip. Arguments go to bench/edge.mjs (--requests N --concurrency C --runs R).
set -euo pipefail
source "$(dirname "$0")/../.ci/setup.sh"
bash .ci/build-edge.sh >/dev/null
exec "$HEARTH_NODE" bench/edge.mjs "$@"
