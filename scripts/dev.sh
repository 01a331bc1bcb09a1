#!/usr/bin/env bash
# Starts a local Tessera group: 3 shard-node members on loopback, member n1
# serving etcd's API on 127.0.0.1:2379 (n2 on 22379, n3 on 32379).
# Installs prerequisites and builds first. Data in ${DATA:-./.tessera-dev};
# a restart of this command resumes it. Ctrl-C stops all members.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/prereqs.sh
. scripts/env.sh
cargo build --bin shard-node
data="${DATA:-$PWD/.tessera-dev}"
mkdir -p "$data"
cluster="n1=http://127.0.0.1:2380,n2=http://127.0.0.1:22380,n3=http://127.0.0.1:32380"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait; echo stopped' INT TERM EXIT
for spec in n1:2379:2380 n2:22379:22380 n3:32379:32380; do
  IFS=: read -r name cport pport <<<"$spec"
  "$TESSERA_BIN/shard-node" --name "$name" --data-dir "$data/$name" \
    --listen-client-urls "http://127.0.0.1:$cport" --advertise-client-urls "http://127.0.0.1:$cport" \
    --listen-peer-urls "http://127.0.0.1:$pport" --initial-advertise-peer-urls "http://127.0.0.1:$pport" \
    --initial-cluster "$cluster" --initial-cluster-state new >>"$data/$name.log" 2>&1 &
  pids+=($!)
done
for i in $(seq 1 100); do
  if curl -fs http://127.0.0.1:2379/health >/dev/null 2>&1; then break; fi
  sleep 0.1
done
echo "tessera group ready: endpoints 127.0.0.1:2379,127.0.0.1:22379,127.0.0.1:32379 (logs in $data/*.log)"
echo "try: etcdctl --endpoints=127.0.0.1:2379 put foo bar && etcdctl get foo"
wait
