#!/usr/bin/env bash
# Moving a prefix with its data under writes: a federation of 3 groups
# (`tessera dev`), KEYS keys of 256 B under one placement unit, 4 writers
# putting to it while `move` takes it to another group. Prints the copy
# throughput, the write pause and the writers' latency before and during the
# move (markdown tables).
#   scripts/bench-move.sh [KEYS]     (default 100000)
set -euo pipefail
cd "$(dirname "$0")/.."
keys="${1:-100000}"
. scripts/bench-federation.sh
start_federation --groups 3 --replicas 3
"$TESSERA_BIN/move-bench" --endpoint "$router" --placement "$placement" --keys "$keys"
