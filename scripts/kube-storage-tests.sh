#!/usr/bin/env bash
# Kubernetes' own storage tests against an etcd endpoint: the tests of
# k8s.io/apiserver/pkg/storage/etcd3 (the etcd3 store) and .../storage/cacher (the watch
# cache on top of it), at the release scripts/kube-tools.sh builds kube-apiserver from.
# They run storage/testing's generic suite (RunTestCreate, RunTestList,
# RunTestConsistentList, RunTestWatch, RunTestWatchFromZero, RunOptionalTestProgressNotify,
# ...) plus the packages' own tests, unchanged; tests/k8s swaps only the embedded etcd
# each test starts (etcd3/testserver.RunEtcd) for a client to ENDPOINT, in a keyspace of
# its own (a prefix that keeps the key's slashes, so keys spread over a router's groups),
# one test at a time. The test binaries are built once, cached outside the checkout
# under $TESSERA_TOOLS (default ~/.cache/tessera/tools)/k8s-storage-tests/.
#
# usage: scripts/kube-storage-tests.sh ENDPOINT [go test flags, e.g. -test.run 'TestWatch$']
#        scripts/kube-storage-tests.sh --etcd[=3.7] [flags]   (a fresh etcd 3.6 (or 3.7), started
#          and stopped here, as scripts/etcd-tools.sh builds them)
# ENDPOINT (host:port, or several comma-separated) must hold no keys (the tests compact it
# and want it to themselves; ETCD_WIPE=1 deletes every key first). Like the tests'
# embedded etcd, it should send watch progress notifications every second (etcd --watch-progress-notify-interval=1s, router
# --experimental-watch-progress-notify-interval=1s), or the ProgressNotify tests fail.
# Output: one line per test, the failures with their first lines, a summary; full logs in
# $K8S_TESTS_LOG_DIR (default a temp dir, printed). Exit status 0 when every test passed but
# those tests/k8s/shared-endpoint-failures.txt lists (they fail on real etcd too, here).
set -euo pipefail
KUBE=v1.37.2 API=v0.37.2
[ $# -ge 1 ] || { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 2; }
endpoint=$1; shift
root=$(cd "$(dirname "$0")/.." && pwd)
dest=${TESSERA_TOOLS:-$HOME/.cache/tessera/tools}
mkdir -p "$dest" && dest=$(cd "$dest" && pwd)
export PATH=/usr/local/go/bin:$PATH GOTOOLCHAIN=${GOTOOLCHAIN:-local} GOPROXY=${GOPROXY:-https://proxy.golang.org}
export GOPATH=$dest/go GOMODCACHE=$dest/go/pkg/mod GOCACHE=$dest/go/cache GOFLAGS="-mod=readonly -p=1 -trimpath" CGO_ENABLED=0
src=$root/tests/k8s
key=$(cat "$src/go.mod" "$src/go.sum" "$src/tools.go" "$src/overlay/test_server.go" | sha256sum | cut -c1-16)
build=$dest/k8s-storage-tests/$API-$key
pkgs=(etcd3 cacher)

# --- Build (cached): a copy of k8s.io/apiserver with the swapped test server, and
# tests/k8s's go.mod pointing at it; neither is written into the checkout.
if ! [ -x "$build/bin/cacher.test" ] || ! [ -x "$build/bin/etcd3.test" ]; then
  echo "kube-storage-tests: building the test binaries into $build (cold: several minutes)" >&2
  t0=$(date +%s)
  rm -rf "$build" && mkdir -p "$build/mod" "$build/bin"
  blog=$build/build.log
  (
    set -e
    cd "$src"
    dir=$(go mod download -json "k8s.io/apiserver@$API" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
    cp -r "$dir" "$build/apiserver" && chmod -R u+w "$build/apiserver"
    cp "$src/overlay/test_server.go" "$build/apiserver/pkg/storage/etcd3/testserver/test_server.go"
    cp "$src/go.mod" "$src/go.sum" "$src/tools.go" "$build/mod/"
    cd "$build/mod"
    go mod edit -replace "k8s.io/apiserver=../apiserver"
    for p in "${pkgs[@]}"; do
      nice -n 15 go test -c -o "$build/bin/$p.test.tmp" "k8s.io/apiserver/pkg/storage/$p"
      mv "$build/bin/$p.test.tmp" "$build/bin/$p.test"
    done
  ) >"$blog" 2>&1 || { echo "kube-storage-tests: build failed, see $blog" >&2; tail -n 30 "$blog" >&2; rm -rf "$build/bin"; exit 1; }
  echo "kube-storage-tests: built in $(( $(date +%s) - t0 ))s" >&2
fi

logs=${K8S_TESTS_LOG_DIR:-$(mktemp -d -t kube-storage-tests.XXXXXX)}
mkdir -p "$logs"

# --- A fresh etcd 3.6, if asked: free loopback ports, a temp dir, stopped on exit
# (only this process).
if [[ $endpoint == --etcd* ]]; then
  v=${endpoint#--etcd}; v=${v#=}
  etcd=$dest/etcd-${v:-3.6}/bin/etcd
  [ -x "$etcd" ] || { echo "kube-storage-tests: $etcd is missing (scripts/etcd-tools.sh builds it)" >&2; exit 1; }
  read -r cport pport < <(python3 -c 'import socket
s=[socket.socket() for _ in range(2)]
[x.bind(("127.0.0.1",0)) for x in s]
print(*[x.getsockname()[1] for x in s])')
  etcd_dir=$(mktemp -d -t kube-storage-etcd.XXXXXX)
  "$etcd" --name ref --data-dir "$etcd_dir/data" \
    --listen-client-urls "http://127.0.0.1:$cport" --advertise-client-urls "http://127.0.0.1:$cport" \
    --listen-peer-urls "http://127.0.0.1:$pport" --initial-advertise-peer-urls "http://127.0.0.1:$pport" \
    --initial-cluster "ref=http://127.0.0.1:$pport" --watch-progress-notify-interval=1s --unsafe-no-fsync \
    >"$logs/etcd.log" 2>&1 &
  etcd_pid=$!
  trap 'kill "$etcd_pid" 2>/dev/null; wait "$etcd_pid" 2>/dev/null || true; rm -rf "$etcd_dir"' EXIT
  endpoint=127.0.0.1:$cport
  for _ in $(seq 200); do
    curl -fsS "http://$endpoint/health" 2>/dev/null | grep -q '"health":"true"' && break
    kill -0 "$etcd_pid" 2>/dev/null || { echo "kube-storage-tests: etcd exited, see $logs/etcd.log" >&2; exit 1; }
    sleep 0.1
  done
  echo "kube-storage-tests: etcd $("$etcd" --version | sed -n 's/^etcd Version: //p') on $endpoint (pid $etcd_pid)"
fi

# --- Run: one package after the other (each test in a keyspace of its own).
echo "kube-storage-tests: k8s.io/apiserver $API storage tests against $endpoint; logs in $logs"
status=0
run() { # package, go test flags...
  local p=$1; shift
  # Tests read testdata/ relative to their package, as under go test.
  (cd "$build/apiserver/pkg/storage/$p" &&
    ETCD_ENDPOINT=$endpoint go tool test2json -p "$p" "$build/bin/$p.test" -test.v=test2json \
      -test.timeout=30m -test.parallel=32 "$@") >"$logs/$p.json" 2>"$logs/$p.stderr" || status=1
}
for p in "${pkgs[@]}"; do
  t0=$(date +%s)
  run "$p" "$@"
  echo "kube-storage-tests: $p ran in $(( $(date +%s) - t0 ))s"
done

status=0 # the summary decides: failures not listed in shared-endpoint-failures.txt
python3 - "$logs" "$src/shared-endpoint-failures.txt" "${pkgs[@]}" <<'EOF' || status=1
import json, sys, os
logs, known_file, pkgs = sys.argv[1], sys.argv[2], sys.argv[3:]
known = set()
for line in open(known_file):
    line = line.strip()
    if line and not line.startswith("#"):
        known.add(tuple(line.split(" ", 1)))
failed_any = False
for p in pkgs:
    res, out, order = {}, {}, []
    with open(os.path.join(logs, p + ".json")) as f:
        for line in f:
            try:
                e = json.loads(line)
            except ValueError:
                continue
            t = e.get("Test")
            if not t:
                if e.get("Action") == "fail":
                    res["(package)"] = ("fail", e.get("Elapsed", 0))
                continue
            if t not in out:
                out[t] = []
                order.append(t)
            if e["Action"] == "output":
                out[t].append(e["Output"].rstrip("\n"))
            elif e["Action"] in ("pass", "fail", "skip"):
                res[t] = (e["Action"], e.get("Elapsed", 0))
    with open(os.path.join(logs, p + ".txt"), "w") as f:
        for t in order:
            f.write("".join(l + "\n" for l in out[t]))
    # Leaves (tests without subtests) carry the verdicts; parents fail with them.
    leaves = [t for t in order if not any(o.startswith(t + "/") for o in order)]
    unfinished = [t for t in leaves if t not in res]
    count = {k: sum(1 for t in leaves if res.get(t, ("",))[0] == k) for k in ("pass", "fail", "skip")}
    shared = [t for t in leaves if res.get(t, ("",))[0] == "fail" and (p, t) in known]
    print(f"== {p}: {len(leaves)} tests: {count['pass']} pass, {count['fail'] - len(shared)} fail, {count['skip']} skip, "
          f"{len(shared)} fail only for the shared endpoint (as on etcd)"
          + (f", {len(unfinished)} unfinished (timeout/panic)" if unfinished else ""))
    for t in leaves:
        v = res.get(t, ("UNFINISHED", 0))
        tag = "FAIL (shared endpoint)" if t in shared else v[0].upper()
        print(f"  {tag:10} {t} ({v[1]:.2f}s)")
    for t in leaves:
        v = res.get(t, ("UNFINISHED", 0))[0]
        if v in ("fail", "UNFINISHED") and t not in shared:
            failed_any = True
            msgs = [l for l in out[t] if l.strip() and not l.startswith(("=== ", "--- ")) ]
            print(f"-- {p} {t}: {v.upper()}")
            for l in msgs[:12]:
                print("     " + l[:400])
            if len(msgs) > 12:
                print(f"     ... ({len(msgs) - 12} more lines in {os.path.join(logs, p + '.txt')})")
    if res.get("(package)", ("",))[0] == "fail" and not any(res.get(t, ("",))[0] == "fail" for t in leaves):
        failed_any = True
        print(f"-- {p}: the package failed (see {os.path.join(logs, p + '.txt')} and {p}.stderr)")
sys.exit(1 if failed_any else 0)
EOF
[ "$status" = 0 ] && echo "kube-storage-tests: every test passed against $endpoint (but those failing on etcd too for the shared endpoint)" || echo "kube-storage-tests: failures against $endpoint (above); logs in $logs"
exit "$status"
