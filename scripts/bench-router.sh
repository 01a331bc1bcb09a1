#!/usr/bin/env bash
# The router's cost and the merged watch, measured in one run on this machine
# with etcd's own `benchmark` tool (and our watch-latency tool), one system at
# a time so they never share the CPUs:
#   etcd 3.4 (3 members), also through etcd's grpc-proxy | a Tessera group direct (3 shard-nodes) |
#   router → federation of 1 group (3 voters) | router → 3 groups.
# Prints two markdown tables. Federation ports sit below the ephemeral range
# (32768+), where a port freed by one system may be taken by a connection.
#   scripts/bench-router.sh [TOTAL]     (default 20000 requests per row at 100 clients)
set -euo pipefail
cd "$(dirname "$0")/.."
total="${1:-20000}"
. scripts/bench-lib.sh
bench_prereqs
cargo build -q --bins

fed_dir=""
start_federation() { # groups client_port
  fed_dir="$work/fed-$1"
  "$TESSERA_BIN/tessera" dev --groups "$1" --replicas 3 --learners 0 --client-port "$2" --data-dir "$fed_dir" \
    >"$work/fed-$1.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 600); do grep -q "federation ready" "$work/fed-$1.log" && break; sleep 0.1; done
  grep -q "federation ready" "$work/fed-$1.log" || {
    echo "federation did not start" >&2; cat "$work/fed-$1.log" >&2; tail -n 20 "$fed_dir"/logs/*.log >&2; exit 1
  }
  endpoints="127.0.0.1:$2"
}

# The CPU of a federation is that of every process `tessera dev` started.
cpu_seconds() {
  local ticks=0 pid all=("${pids[@]}")
  for pid in "${pids[@]}"; do all+=($(pgrep -P "$pid" || true)); done
  for pid in "${all[@]}"; do
    [ -r "/proc/$pid/stat" ] || continue
    ticks=$((ticks + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
  done
  echo "scale=2; $ticks / $(getconf CLK_TCK)" | bc
}

row() { # system test clients args...
  local system=$1 test=$2 clients=$3; shift 3
  local before out
  before=$(cpu_seconds)
  out=$("$bench" --endpoints="$endpoints" --clients="$clients" --conns="$(( clients < 10 ? clients : 10 ))" "$@" 2>&1)
  cpu=$(echo "$(cpu_seconds) - $before" | bc)
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '/ 50% in/ {print $3*1000}' <<<"$out")
  p99=$(awk '/ 99% in/ {print $3*1000}' <<<"$out")
  grep -q "Error distribution" <<<"$out" && test="$test (ERRORS)"
  printf '| %-26s | %-24s | %7s | %10.0f | %8.2f | %8.2f | %8.1f |\n' "$system" "$test" "$clients" "$rps" "$p50" "$p99" "$cpu"
}

run_all() { # system
  local few=$((total / 10))
  row "$1" "put (256 B)" 1 put --total="$few" --key-space-size=100000 --val-size=256
  row "$1" "put (256 B)" 100 put --total="$total" --key-space-size=100000 --val-size=256
  ETCDCTL_API=3 etcdctl --endpoints="$endpoints" put foo bar >/dev/null
  row "$1" "range linearizable" 1 range foo --total="$few" --consistency=l
  row "$1" "range linearizable" 100 range foo --total="$total" --consistency=l
  row "$1" "range serializable" 100 range foo --total="$total" --consistency=s
}

watch_row() { # label units
  "$TESSERA_BIN/watch-latency" --endpoint "http://${endpoints%%,*}" --units "$2" --total 2000 --rate 200 --label "$1"
}

results="$work/results"
{
  echo "| system                     | benchmark                | clients | requests/s | p50 (ms) | p99 (ms) | CPU (s) |"
  echo "|----------------------------|--------------------------|--------:|-----------:|---------:|---------:|--------:|"
} >"$results.kv"
{
  echo "| watch (2000 puts at 200/s, 1 watcher)       | events | p50 (ms) | p99 (ms) | max (ms) |"
  echo "|----------------------------------------------|-------:|---------:|---------:|---------:|"
} >"$results.watch"

start_cluster etcd 21000
run_all "etcd 3.4" >>"$results.kv"; watch_row "etcd 3.4: one watch" 1 >>"$results.watch"
# etcd's own proxy over the same cluster: what one more gRPC hop costs here
# (its serializable ranges come from its cache).
members=$endpoints
etcd grpc-proxy start --endpoints="$members" --listen-addr=127.0.0.1:21100 >"$work/grpc-proxy.log" 2>&1 &
pids+=($!)
wait_writable 127.0.0.1:21100 || { echo "etcd grpc-proxy did not start" >&2; cat "$work/grpc-proxy.log" >&2; exit 1; }
endpoints=127.0.0.1:21100
run_all "etcd 3.4 via grpc-proxy" >>"$results.kv"; stop_cluster
start_cluster tessera 22000
run_all "tessera group, direct" >>"$results.kv"; watch_row "tessera group direct: one watch" 1 >>"$results.watch"; stop_cluster
start_federation 1 12379
run_all "router → 1 group" >>"$results.kv"; stop_cluster
start_federation 3 13379
run_all "router → 3 groups" >>"$results.kv"
watch_row "router → 3 groups: single-group watch" 1 >>"$results.watch"
watch_row "router → 3 groups: watch merged over 3" 12 >>"$results.watch"
stop_cluster
cat "$results.kv"; echo; cat "$results.watch"
