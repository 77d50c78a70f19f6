#!/usr/bin/env bash
# hearth's catalog scoring benchmark: int8 (1 thread, all threads), exact f32 and the memory-read
# floor side by side, N in {1e5, 1e6} x d in {32, 64, 128}. Extra arguments go to the bench
# (--json, --quick, --n N, --d D, --queries Q). FAISS side by side: bench/faiss_compare.py.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo bench -q -p hearth-core --no-default-features --bench scoring -- "$@"
