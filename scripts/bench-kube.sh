#!/usr/bin/env bash
# A Kubernetes-like load through a real kube-apiserver (v1.37.2, scripts/kube-tools.sh),
# on each system in turn, in one run on this machine (never two at once):
#   etcd      a single etcd 3.6 member (scripts/etcd-tools.sh), fsync on as by default
#   etcd-3    three etcd 3.6 members (replicated, as a Tessera group), kube-apiserver
#             given all three
#   tessera   `tessera dev`: router → 3 groups (3 voters + 1 learner each, 4 shard-nodes,
#             placement's store of 3), with /registry/configmaps/ spread over the 3
#             groups by namespace (`tessera spread`, before kube-apiserver writes any)
#   tessera-ring  (optional) the same without the spread: every ConfigMap in the one
#             group the ring gives /registry/configmaps/
# The load is tests/k8s/bench (client-go): writers creating/updating/deleting
# ConfigMaps in 8 namespaces, informers timing create/update → event, paginated
# (limit=500) and consistent (resourceVersion="") lists of every ConfigMap. Each
# system gets a fresh store, a fresh kube-apiserver and the same load for SECONDS.
# Prints one markdown table (system, operation, ops, ops/s, p50, p99, errors), then
# one row per system: the CPU seconds the store's and kube-apiserver's processes used
# during the load (and the load tool's, and whatever else ran on the machine meanwhile:
# ~0 for a fair run), and kube-apiserver's metrics on its watch cache for ConfigMaps
# (consistent reads it served, reads that had to wait for it to catch up).
#
#   scripts/bench-kube.sh [SECONDS]      (default 60 per system)
#   BENCH_KUBE_SYSTEMS="etcd etcd-3 tessera tessera-ring"   which systems, in order
#   BENCH_KUBE_ARGS="--writers 16 ..."   more flags for the load tool (kube-bench -h)
#   BENCH_KUBE_KEEP=1                    keep the work dir (logs) after the run
#   BENCH_KUBE_NO_BUILD=1                use Tessera's binaries as built (no cargo build)
#
# Builds, cached outside the checkout: the load tool into
# $TESSERA_TOOLS/kube-bench/<hash of its sources>/ (default ~/.cache/tessera/tools);
# Tessera's binaries with `cargo build --workspace --bins` (after any other cargo on the
# machine has finished: one build at a time). Ports are free ones on 127.0.0.1; every
# wait is on readiness. Only the processes started here are stopped, by PID.
set -euo pipefail
seconds=${1:-60}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
. scripts/env.sh
KUBE=v1.37.2
systems=${BENCH_KUBE_SYSTEMS:-etcd etcd-3 tessera}
host=127.0.0.1
say() { echo "bench-kube: $*" >&2; }

# --- Tools: kube-apiserver, etcd 3.6 (both cached, quiet when present).
scripts/kube-tools.sh "$TESSERA_TOOLS" >/dev/null
[ -x "$TESSERA_TOOLS/etcd-3.6/bin/etcd" ] || scripts/etcd-tools.sh "$TESSERA_TOOLS" >/dev/null
apiserver=$TESSERA_TOOLS/kube-$KUBE/bin/kube-apiserver
etcd=$TESSERA_TOOLS/etcd-3.6/bin/etcd

# --- The load tool, built once per version of its sources.
say "the load tool (tests/k8s/bench)"
kb=$("$root/scripts/go-tool.sh" "$root/tests/k8s/bench" kube-bench "$TESSERA_TOOLS") || { say "building the load tool failed"; exit 1; }

# --- Tessera's binaries: one cargo at a time on this machine.
if [[ " $systems " == *" tessera"* ]] && [ "${BENCH_KUBE_NO_BUILD:-0}" != 1 ]; then
  while pgrep -x cargo >/dev/null; do
    say "waiting for another cargo to finish (pids $(pgrep -x cargo | tr '\n' ' '))"
    while pgrep -x cargo >/dev/null; do sleep 2; done
  done
  say "cargo build --workspace --bins"
  cargo build -q --workspace --bins
fi

work=$(mktemp -d -t bench-kube.XXXXXX)
pids=()   # every process started here, stopped (by PID) when the script ends
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  if [ "${BENCH_KUBE_KEEP:-0}" = 1 ]; then say "logs kept in $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# stop PID: SIGTERM, wait for it (tessera dev stops its own processes on SIGTERM).
stop() {
  kill "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
  local p keep=()
  for p in "${pids[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
  pids=("${keep[@]}")
}

# wait_for WHAT PID SECONDS CMD...: polls CMD (every 0.2 s) until it succeeds; fails
# when PID exits or SECONDS pass.
wait_for() {
  local what=$1 pid=$2 limit=$3; shift 3
  local t0=$SECONDS
  until "$@" >/dev/null 2>&1; do
    kill -0 "$pid" 2>/dev/null || { say "$what: its process exited"; return 1; }
    (( SECONDS - t0 < limit )) || { say "$what: not ready after ${limit}s"; return 1; }
    sleep 0.2
  done
}

# CPU seconds (user + system) of PIDs and their children.
cpu_of() {
  local ticks=0 p all=()
  for p in "$@"; do all+=("$p" $(pgrep -P "$p" || true)); done
  for p in "${all[@]}"; do
    [ -r "/proc/$p/stat" ] || continue
    ticks=$((ticks + $(awk '{print $14 + $15}' "/proc/$p/stat")))
  done
  echo "scale=1; $ticks / $(getconf CLK_TCK)" | bc
}

# CPU seconds the whole machine has been busy (user, nice, system, irq, softirq, steal).
machine_cpu() {
  awk -v hz="$(getconf CLK_TCK)" '$1 == "cpu" { printf "%.1f\n", ($2 + $3 + $4 + $7 + $8 + $9) / hz }' /proc/stat
}

# --- Credentials for kube-apiserver, made once: service-account keys, a static token.
openssl genrsa -out "$work/sa.key" 2048 2>/dev/null
openssl rsa -in "$work/sa.key" -pubout -out "$work/sa.pub" 2>/dev/null
token=bench-$(od -An -N8 -tx8 /dev/urandom | tr -d ' ')
echo "$token,admin,admin,\"system:masters\"" >"$work/tokens.csv"

store_pids=() etcd_endpoint=""
start_etcd() { # members (1 or 3): kube-apiserver talks to all of them
  local n=$1 i c p cluster="" clients=() peers=()
  for i in $(seq 1 "$n"); do
    clients+=("$(free_port)"); peers+=("$(free_port)")
    cluster+="${cluster:+,}m$i=http://$host:${peers[-1]}"
  done
  store_pids=()
  for i in $(seq 1 "$n"); do
    c=${clients[$((i - 1))]} p=${peers[$((i - 1))]}
    "$etcd" --name "m$i" --data-dir "$work/etcd-$n/m$i" \
      --listen-client-urls "http://$host:$c" --advertise-client-urls "http://$host:$c" \
      --listen-peer-urls "http://$host:$p" --initial-advertise-peer-urls "http://$host:$p" \
      --initial-cluster "$cluster" >"$work/etcd-$n-m$i.log" 2>&1 &
    store_pids+=($!); pids+=($!)
  done
  etcd_endpoint=$(printf "$host:%s," "${clients[@]}"); etcd_endpoint=${etcd_endpoint%,}
  wait_for "etcd" "${store_pids[0]}" 60 sh -c "curl -fsS http://$host:${clients[0]}/health | grep -q '\"health\":\"true\"'" ||
    { tail -n 20 "$work/etcd-$n-m1.log" >&2; exit 1; }
  say "etcd $("$etcd" --version | sed -n 's/^etcd Version: //p'), $n member(s), on $etcd_endpoint (pids ${store_pids[*]})"
}

start_tessera() { # spread: 1 spreads /registry/configmaps/ over the groups
  local d=$work/$2 placement groups
  "$TESSERA_BIN/tessera" dev --data-dir "$d" --client-port 0 --host "$host" >"$work/$2.log" 2>&1 &
  store_pids=($!); pids+=($!)
  wait_for "tessera dev" "${store_pids[0]}" 180 grep -q "federation ready" "$work/$2.log" ||
    { tail -n 20 "$work/$2.log" >&2; tail -n 5 "$d"/logs/*.log >&2 || true; exit 1; }
  read -r etcd_endpoint placement < <(python3 -c 'import json,sys; e=json.load(open(sys.argv[1]))
print(e["router"].replace("http://",""), e["placement"])' "$d/endpoints.json")
  groups=$("$TESSERA_BIN/tessera" --placement "$placement" status --json | python3 -c 'import json,sys; print(",".join(map(str,json.load(sys.stdin)["ring"])))')
  if [ "$1" = 1 ]; then
    "$TESSERA_BIN/tessera" --placement "$placement" spread /registry/configmaps/ "$groups" >/dev/null
    say "tessera: router on $etcd_endpoint, groups $groups, /registry/configmaps/ spread over them (pid ${store_pids[0]})"
  else
    say "tessera: router on $etcd_endpoint, groups $groups, no spread (pid ${store_pids[0]})"
  fi
  tessera_placement=$placement
}

kube_pid="" kubeconfig=""
start_kube() { # system
  local port d=$work/kube-$1
  mkdir -p "$d"
  port=$(free_port)
  "$apiserver" \
    --etcd-servers="$(echo "$etcd_endpoint" | sed "s|^|http://|; s|,|,http://|g")" \
    --bind-address="$host" --advertise-address="$host" \
    --endpoint-reconciler-type=none \
    --secure-port="$port" --cert-dir="$d/certs" \
    --token-auth-file="$work/tokens.csv" --authorization-mode=AlwaysAllow \
    --disable-admission-plugins=ServiceAccount \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$work/sa.pub" --service-account-signing-key-file="$work/sa.key" \
    --service-cluster-ip-range=10.0.0.0/24 --profiling=false --v=1 \
    >"$d/kube-apiserver.log" 2>&1 &
  kube_pid=$!; pids+=("$kube_pid")
  kubeconfig=$d/kubeconfig
  cat >"$kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: b
  cluster:
    server: https://$host:$port
    insecure-skip-tls-verify: true
users:
- name: admin
  user:
    token: $token
contexts:
- name: b
  context:
    cluster: b
    user: admin
current-context: b
EOF
  wait_for "kube-apiserver on $1" "$kube_pid" 180 \
    sh -c "curl -fsSk -H 'Authorization: Bearer $token' https://$host:$port/readyz | grep -qx ok" ||
    { tail -n 20 "$d/kube-apiserver.log" >&2; exit 1; }
  kube_url=https://$host:$port
  say "kube-apiserver $KUBE on $1 ready on $host:$port (pid $kube_pid)"
}

results=$work/results.md cpu=$work/cpu.md
"$kb" --header --label x >"$results"
{
  echo "| system | store CPU (s) | kube-apiserver CPU (s) | load tool CPU (s) | other CPU (s) | consistent reads from cache / fell back | cache reads that waited (mean ms) |"
  echo "|--------|--------------:|-----------------------:|------------------:|--------------:|----------------------------------------:|----------------------------------:|"
} >"$cpu"
for sys in $systems; do
  case $sys in
    etcd) start_etcd 1 ;;
    etcd-3) start_etcd 3 ;;
    tessera) start_tessera 1 "$sys" ;;
    tessera-ring) start_tessera 0 "$sys" ;;
    *) say "unknown system $sys"; exit 2 ;;
  esac
  start_kube "$sys"
  s0=$(cpu_of "${store_pids[@]}"); k0=$(cpu_of "$kube_pid"); m0=$(machine_cpu)
  say "$sys: load for ${seconds}s (load average now $(cut -d' ' -f1-3 /proc/loadavg))"
  # shellcheck disable=SC2086 # BENCH_KUBE_ARGS is a list of flags
  "$kb" --kubeconfig "$kubeconfig" --duration "${seconds}s" --label "$sys" ${BENCH_KUBE_ARGS:-} \
    >>"$results" 2>"$work/kube-bench-$sys.log" ||
    { cat "$work/kube-bench-$sys.log" >&2; say "$sys: the load tool failed"; exit 1; }
  grep -v '^kube-bench: cpu ' "$work/kube-bench-$sys.log" >&2 || true
  s1=$(cpu_of "${store_pids[@]}"); k1=$(cpu_of "$kube_pid"); m1=$(machine_cpu)
  t=$(sed -n 's/^kube-bench: cpu \([0-9.]*\) s$/\1/p' "$work/kube-bench-$sys.log"); t=${t:-0}
  # What else ran on the machine meanwhile (should be ~0 for a fair run).
  other=$(awk -v x="$(echo "$m1 - $m0 - ($s1 - $s0) - ($k1 - $k0) - $t" | bc)" 'BEGIN { printf "%.1f", x < 0 ? 0 : x }')
  curl -fsSk -H "Authorization: Bearer $token" "$kube_url/metrics" >"$work/metrics-$sys.txt" || true
  # kube-apiserver's own view of the ConfigMap reads: consistent reads served by the
  # watch cache (and fallbacks to the store), reads that waited for the cache to catch
  # up with the store's revision, and how long on average.
  cache=$(python3 - "$work/metrics-$sys.txt" <<'PY'
import sys
ok = fb = waited = wait_s = 0.0
for line in open(sys.argv[1]):
    if 'resource="configmaps"' not in line:
        continue
    name, v = line.split("{")[0], float(line.rsplit(" ", 1)[1])
    if name == "apiserver_watch_cache_consistent_read_total":
        if 'fallback="true"' in line: fb += v
        elif 'success="true"' in line: ok += v
    elif name == "apiserver_watch_cache_read_wait_seconds_count": waited += v
    elif name == "apiserver_watch_cache_read_wait_seconds_sum": wait_s += v
mean = wait_s / waited * 1000 if waited else 0
print(f"{ok:.0f} / {fb:.0f} | {waited:.0f} ({mean:.1f})")
PY
  ) || cache="? | ?"
  printf '| %s | %.1f | %.1f | %.1f | %s | %s |\n' "$sys" "$(echo "$s1 - $s0" | bc)" "$(echo "$k1 - $k0" | bc)" "$t" "$other" "$cache" >>"$cpu"
  if [[ $sys == tessera* ]]; then
    "$TESSERA_BIN/tessera" --placement "$tessera_placement" status --json | python3 -c 'import json,sys
print("bench-kube: keys per group:", ", ".join("%s: %s" % (g["id"], g["keys"]) for g in json.load(sys.stdin)["groups"]))' >&2 || true
  fi
  stop "$kube_pid"
  for p in "${store_pids[@]}"; do stop "$p"; done
done
echo
cat "$results"
echo
cat "$cpu"
