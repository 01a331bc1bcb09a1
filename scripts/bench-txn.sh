#!/usr/bin/env bash
# Txns over several keys — within one group, and across 2 and 3 groups of a
# federation (each txn: a compare, then a put of every key) — beside etcd
# 3.4 (3 members) and a Tessera group direct, from one run on this machine,
# one system at a time. Prints a markdown table.
#   scripts/bench-txn.sh [TOTAL]     (default 2000 txns per row)
set -euo pipefail
cd "$(dirname "$0")/.."
total="${1:-2000}"
. scripts/bench-lib.sh
bench_prereqs
cargo build -q --bins

start_federation() { # groups client_port
  local dir="$work/fed-$1"
  "$TESSERA_BIN/tessera" dev --groups "$1" --replicas 3 --learners 0 --client-port "$2" --data-dir "$dir" \
    >"$work/fed-$1.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 600); do grep -q "federation ready" "$work/fed-$1.log" && break; sleep 0.1; done
  grep -q "federation ready" "$work/fed-$1.log" || { echo "federation did not start" >&2; cat "$work/fed-$1.log" >&2; exit 1; }
  endpoints="127.0.0.1:$2"
  store=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["store"][0][0])' "$dir/endpoints.json")
}

row() { # label keys groups clients [store]
  "$TESSERA_BIN/txn-bench" --endpoint "http://${endpoints%%,*}" --label "$1" --keys "$2" --groups "$3" \
    --clients "$4" --total "$total" ${5:+--store "$5"}
}

echo "| system                             | keys | groups | clients |  txns/s  | p50 (ms) | p99 (ms) |"
echo "|------------------------------------|-----:|-------:|--------:|---------:|---------:|---------:|"
if [ -z "${FED_ONLY:-}" ]; then start_cluster etcd 23000
for c in 1 16; do row "etcd 3.4" 2 1 "$c"; done; stop_cluster
start_cluster tessera 24000
for c in 1 16; do row "tessera group, direct" 2 1 "$c"; done; stop_cluster; fi
start_federation 3 14379
for c in 1 16; do
  row "router → 3 groups, one group" 2 1 "$c" "$store"
  row "router → 3 groups, across 2" 2 2 "$c" "$store"
  row "router → 3 groups, across 3" 3 3 "$c" "$store"
done
stop_cluster
