#!/usr/bin/env bash
# hearth's history benchmark: record, save+seal, open+unseal, sync of one new event and the
# saved size over 100,000 events (compacted vs not), each beside its baseline. --quick: smaller.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo bench -q -p hearth-core --no-default-features --bench history -- "$@"
