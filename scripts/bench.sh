#!/usr/bin/env bash
# Benchmarks a 3-member Tessera group beside a 3-member etcd 3.4 on this
# machine, in one run, with etcd's own `benchmark` tool, and prints a table.
# The clusters run one after the other so they do not share the CPUs.
#   scripts/bench.sh [TOTAL]     (default 20000 requests per row)
set -euo pipefail
cd "$(dirname "$0")/.."
total="${1:-20000}"
. scripts/bench-lib.sh
bench_prereqs

row() { # system test args...
  local system=$1 test=$2; shift 2
  run_bench "$@"
  printf '| %-8s | %-28s | %10.0f | %8.2f | %8.2f |\n' "$system" "$test" "$rps" "$p50" "$p99"
}

run_all() { # system
  row "$1" "put (256 B values)" put --total="$total" --key-space-size=100000 --val-size=256
  ETCDCTL_API=3 etcdctl --endpoints="$endpoints" put foo bar >/dev/null
  row "$1" "range linearizable" range foo --total="$total" --consistency=l
  row "$1" "range serializable" range foo --total="$total" --consistency=s
}

echo "| system   | benchmark (--clients=100 --conns=10) | requests/s | p50 (ms) | p99 (ms) |"
echo "|----------|------------------------------|-----------:|---------:|---------:|"
start_cluster etcd 21000; run_all etcd; stop_cluster
start_cluster tessera 22000; run_all tessera; stop_cluster
