#!/usr/bin/env bash
# Read scaling with learners: `benchmark range` (serializable and
# linearizable) against a 3-voter Tessera group, then against the same
# group with 2 learners added, with the CPU the members spent per request.
#   scripts/bench-learners.sh [TOTAL]     (default 20000 requests per row)
set -euo pipefail
cd "$(dirname "$0")/.."
total="${1:-20000}"
. scripts/bench-lib.sh
bench_prereqs

row() { # setup consistency
  run_bench range foo --total="$total" --consistency="$2"
  printf '| %-22s | %-12s | %10.0f | %8.2f | %8.2f | %7.2f | %12.0f |\n' "$1" "$2" "$rps" "$p50" "$p99" "$cpu" \
    "$(echo "$total / $cpu" | bc)"
}

echo "| members (clients → all) | consistency | requests/s | p50 (ms) | p99 (ms) | CPU-s | req per CPU-s |"
echo "|------------------------|--------------|-----------:|---------:|---------:|--------:|-------------:|"
base=43000
start_cluster tessera $base
ETCDCTL_API=3 etcdctl --endpoints="$endpoints" put foo bar >/dev/null
row "3 voters" s
row "3 voters" l
voters=$endpoints
cluster="m1=http://127.0.0.1:$((base + 11)),m2=http://127.0.0.1:$((base + 21)),m3=http://127.0.0.1:$((base + 31))"
for i in 4 5; do
  c=$((base + 10 * i)); p=$((c + 1))
  ETCDCTL_API=3 etcdctl --endpoints="$voters" member add "m$i" --learner --peer-urls="http://127.0.0.1:$p" >/dev/null
  cluster+=",m$i=http://127.0.0.1:$p"
  start_member tessera "m$i" "$c" "$p" "$cluster" existing
  endpoints+=",127.0.0.1:$c"
done
for _ in $(seq 1 100); do
  ETCDCTL_API=3 etcdctl --endpoints="127.0.0.1:$((base + 50))" get foo >/dev/null 2>&1 && break
  sleep 0.1
done
row "3 voters + 2 learners" s
row "3 voters + 2 learners" l
stop_cluster
