# Shared by the bench scripts: start/stop local clusters, run etcd's
# `benchmark`, account CPU. Sourced, not run.
. "$(dirname "${BASH_SOURCE[0]}")/env.sh"
bench="$TESSERA_TOOLS/etcd-3.4/bin/benchmark"
work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

bench_prereqs() {
  scripts/prereqs.sh
  scripts/etcd-tools.sh "$TESSERA_TOOLS" >/dev/null
  cargo build -q --bin shard-node
}

# member_args kind name client_port peer_port initial_cluster state
start_member() {
  local kind=$1 name=$2 c=$3 p=$4 cluster=$5 state=$6 bin=etcd
  [ "$kind" = tessera ] && bin="$TESSERA_BIN/shard-node"
  "$bin" --name "$name" --data-dir "$work/$kind-$name" \
    --listen-client-urls "http://127.0.0.1:$c" --advertise-client-urls "http://127.0.0.1:$c" \
    --listen-peer-urls "http://127.0.0.1:$p" --initial-advertise-peer-urls "http://127.0.0.1:$p" \
    --initial-cluster "$cluster" --initial-cluster-state "$state" >"$work/$kind-$name.log" 2>&1 &
  pids+=($!)
}

# start_cluster kind base_port: 3 members m1..m3 on base+10, base+20, base+30
# (keep base below 32768, the kernel's ephemeral range, or a port just freed
# may be taken by an outgoing connection)
start_cluster() {
  local kind=$1 base=$2 cluster="" i
  for i in 1 2 3; do cluster+="m$i=http://127.0.0.1:$((base + 10 * i + 1)),"; done
  cluster=${cluster%,}
  for i in 1 2 3; do start_member "$kind" "m$i" $((base + 10 * i)) $((base + 10 * i + 1)) "$cluster" new; done
  endpoints="127.0.0.1:$((base + 10)),127.0.0.1:$((base + 20)),127.0.0.1:$((base + 30))"
  wait_writable "$endpoints" || { echo "$kind cluster did not start" >&2; exit 1; }
}

wait_writable() {
  for _ in $(seq 1 200); do
    ETCDCTL_API=3 etcdctl --endpoints="$1" --command-timeout=1s put bench-ready 1 >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  return 1
}

stop_cluster() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; pids=(); }

# CPU seconds (user+system) used so far by the cluster's processes.
cpu_seconds() {
  local ticks=0 pid
  for pid in "${pids[@]}"; do
    [ -r "/proc/$pid/stat" ] || continue
    ticks=$((ticks + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
  done
  echo "scale=2; $ticks / $(getconf CLK_TCK)" | bc
}

# run_bench args... : sets rps p50 p99 (ms) and cpu (CPU-seconds of the cluster)
run_bench() {
  local before out
  before=$(cpu_seconds)
  out=$("$bench" --endpoints="$endpoints" --clients=100 --conns=10 "$@" 2>&1)
  cpu=$(echo "$(cpu_seconds) - $before" | bc)
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '/ 50% in/ {print $3*1000}' <<<"$out")
  p99=$(awk '/ 99% in/ {print $3*1000}' <<<"$out")
}
