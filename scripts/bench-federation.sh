# Sourced by the bench scripts: builds the binaries and starts a local
# federation (`tessera dev`) with the given flags in a temp dir that goes
# when the script exits; sets $router and $placement.
#   start_federation --groups 3 --replicas 3 ...
. scripts/env.sh
scripts/prereqs.sh
cargo build -q --bins
work=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
start_federation() {
  "$TESSERA_BIN/tessera" dev "$@" --learners 0 --client-port 0 --data-dir "$work/fed" >"$work/fed.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 600); do grep -q "federation ready" "$work/fed.log" && break; sleep 0.1; done
  grep -q "federation ready" "$work/fed.log" || { echo "federation did not start" >&2; cat "$work/fed.log" >&2; exit 1; }
  read -r router placement < <(python3 -c 'import json,sys; e=json.load(open(sys.argv[1])); print(e["router"], e["placement"])' "$work/fed/endpoints.json")
}
