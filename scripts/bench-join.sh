#!/usr/bin/env bash
# Groups joining the ring with their data under writes: a federation of
# one group (`tessera dev`), KEYS keys of 256 B over 50 placement units, 4
# writers putting to every unit (prev_kv checked) while two groups are added
# with `group add --ring`, a rebalance evens the bytes out, and group 1
# drains off the ring and is removed. Prints what
# moved, the ring flips, the write pauses, each group's share and the
# writers' latency (markdown tables).
#   scripts/bench-join.sh [KEYS]     (default 200000)
set -euo pipefail
cd "$(dirname "$0")/.."
keys="${1:-200000}"
. scripts/bench-federation.sh
start_federation --groups 1 --replicas 3 --rebalance-every 0
"$TESSERA_BIN/join-bench" --endpoint "$router" --placement "$placement" --keys "$keys"
