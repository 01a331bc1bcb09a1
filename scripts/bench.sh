#!/usr/bin/env bash
# Benchmarks a 3-member Tessera group beside a 3-member etcd 3.4 on this
# machine, in one run, with etcd's own `benchmark` tool, and prints a table.
# The clusters run one after the other so they do not share the CPUs.
#   scripts/bench.sh [TOTAL]     (default 20000 requests per row)
set -euo pipefail
cd "$(dirname "$0")/.."
total="${1:-20000}"
scripts/prereqs.sh
peers_bin="$HOME/.cache/etcd-peers/bin"
bash "$(pwd)/../shared/tools/etcd-peers.sh" "$peers_bin" >/dev/null
. scripts/env.sh
cargo build -q --bin shard-node
bench="$peers_bin/benchmark"
work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

start_cluster() { # kind base_port
  local kind=$1 base=$2 cluster="" i
  for i in 1 2 3; do cluster+="m$i=http://127.0.0.1:$((base + 10 * i + 1)),"; done
  cluster=${cluster%,}
  for i in 1 2 3; do
    local c=$((base + 10 * i)) p=$((base + 10 * i + 1)) bin=etcd
    [ "$kind" = tessera ] && bin="$TESSERA_BIN/shard-node"
    "$bin" --name "m$i" --data-dir "$work/$kind-m$i" \
      --listen-client-urls "http://127.0.0.1:$c" --advertise-client-urls "http://127.0.0.1:$c" \
      --listen-peer-urls "http://127.0.0.1:$p" --initial-advertise-peer-urls "http://127.0.0.1:$p" \
      --initial-cluster "$cluster" --initial-cluster-state new >"$work/$kind-m$i.log" 2>&1 &
    pids+=($!)
  done
  endpoints="127.0.0.1:$((base + 10)),127.0.0.1:$((base + 20)),127.0.0.1:$((base + 30))"
  for _ in $(seq 1 200); do
    ETCDCTL_API=3 etcdctl --endpoints="$endpoints" --command-timeout=1s endpoint status >/dev/null 2>&1 \
      && ETCDCTL_API=3 etcdctl --endpoints="$endpoints" --command-timeout=1s put bench-ready 1 >/dev/null 2>&1 && return
    sleep 0.1
  done
  echo "$kind cluster did not start" >&2; exit 1
}

stop_cluster() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; pids=(); }

row() { # system test args...
  local system=$1 test=$2; shift 2
  local out; out=$("$bench" --endpoints="$endpoints" --clients=100 --conns=10 "$@" 2>&1)
  local rps p50 p99
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '/ 50% in/ {print $3*1000}' <<<"$out")
  p99=$(awk '/ 99% in/ {print $3*1000}' <<<"$out")
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
start_cluster etcd 41000; run_all etcd; stop_cluster
start_cluster tessera 42000; run_all tessera; stop_cluster
