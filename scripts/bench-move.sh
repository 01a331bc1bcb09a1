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
. scripts/env.sh
scripts/prereqs.sh
cargo build -q --bins
work=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
"$TESSERA_BIN/tessera" dev --groups 3 --replicas 3 --learners 0 --client-port 0 --data-dir "$work/fed" >"$work/fed.log" 2>&1 &
pid=$!
for _ in $(seq 1 600); do grep -q "federation ready" "$work/fed.log" && break; sleep 0.1; done
grep -q "federation ready" "$work/fed.log" || { echo "federation did not start" >&2; cat "$work/fed.log" >&2; exit 1; }
read -r router placement < <(python3 -c 'import json,sys; e=json.load(open(sys.argv[1])); print(e["router"], e["placement"])' "$work/fed/endpoints.json")
"$TESSERA_BIN/move-bench" --endpoint "$router" --placement "$placement" --keys "$keys"
