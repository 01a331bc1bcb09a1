#!/usr/bin/env bash
# Builds kube-apiserver and kubectl (a real etcd client workload for Tessera) from the
# k8s.io/kubernetes module through the Go module proxy, at a pinned release, cached
# outside the checkout: DEST/kube-<version>/bin/{kube-apiserver,kubectl}. A re-run is
# instant and quiet. The cold build takes a while (big module, run niced on one core).
# usage: scripts/kube-tools.sh [DEST]   (default: ~/.cache/tessera/tools)
set -euo pipefail
KUBE=v1.37.2                       # newest k8s.io/kubernetes the proxy serves
dest=${1:-$HOME/.cache/tessera/tools}
mkdir -p "$dest" && dest=$(cd "$dest" && pwd)
dir=$dest/kube-$KUBE log=$dest/kube-tools.log
[ -x "$dir/bin/kube-apiserver" ] && [ -x "$dir/bin/kubectl" ] && [ -s "$dir/versions.txt" ] && exit 0
export PATH=/usr/local/go/bin:$PATH GOTOOLCHAIN=${GOTOOLCHAIN:-local} GOPROXY=${GOPROXY:-https://proxy.golang.org}
export GOPATH=$dest/go GOMODCACHE=$dest/go/pkg/mod GOCACHE=$dest/go/cache GOFLAGS="-mod=mod -p=1 -trimpath" CGO_ENABLED=0
if ! { [ -x "$dir/bin/kube-apiserver" ] && [ -x "$dir/bin/kubectl" ]; }; then
  rm -rf "$dir" && mkdir -p "$dir/mod" "$dir/bin" && cd "$dir/mod"
  (
    # k8s.io/kubernetes can't be `go install`ed: its go.mod requires its staging
    # modules (k8s.io/api, client-go, ...) at v0.0.0 and replaces them with
    # ./staging/src/... paths. A throw-away main module repeats those replaces,
    # pointing each at the published v0.<minor>.<patch> of the same release; the list
    # is generated from kubernetes' own go.mod so it always matches the pin.
    printf 'module tessera.local/kube\n\ngo 1.26\n' > go.mod
    kmod=$(go mod download -json "k8s.io/kubernetes@$KUBE" | sed -n 's/^\t"GoMod": "\(.*\)",$/\1/p')
    for m in $(sed -n 's|^[[:space:]]*\(k8s.io/[^ ]*\) => ./staging/src/.*|\1|p' "$kmod"); do
      go mod edit -replace="$m=$m@v0.${KUBE#v1.}"
    done
    nice -n 15 go get "k8s.io/kubernetes@$KUBE"
    # Stamp the release into both version packages, as kubernetes' own build does,
    # so --version / `kubectl version` report it instead of v0.0.0-master.
    ld="-s -w"
    for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
      ld+=" -X $p.gitVersion=$KUBE -X $p.gitMajor=1 -X $p.gitMinor=$(cut -d. -f2 <<<"$KUBE") -X $p.gitTreeState=clean"
    done
    for c in kube-apiserver kubectl; do
      nice -n 15 go build -ldflags "$ld" -o "$dir/bin/$c" "k8s.io/kubernetes/cmd/$c"
    done
  ) >"$log" 2>&1 || { echo "kube-tools: build failed, see $log" >&2; tail -n 20 "$log" >&2; rm -rf "$dir/bin"; exit 1; }
fi
# What was built, read back from the binaries (the staging modules show as => v0.x).
for c in kube-apiserver kubectl; do
  go version -m "$dir/bin/$c" | awk -v c="$c" '$1=="mod"{print c": "$2"@"$3" (staging modules at v0.'"${KUBE#v1.}"'), "g} NR==1{g=$2}'
done > "$dir/versions.txt"
