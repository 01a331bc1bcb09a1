#!/usr/bin/env bash
# Installs the real etcd binaries that the tests and benches run beside Tessera,
# at pinned versions, cached outside the checkout (a re-run is instant and quiet):
#   /usr/bin/{etcd,etcdctl}          Debian's etcd 3.4 (apt)
#   DEST/etcd-3.4/bin/{benchmark,etcd-runner}  built from Debian's etcd source package
#   DEST/etcd-3.6/bin/{etcd,etcdctl,benchmark} built through the Go module proxy
#   DEST/etcd-3.5/bin/etcd-runner    etcd removed etcd-runner (functional tests) in 3.6,
#                                    so the newest one is the last 3.5's
#   DEST/etcd-3.7/bin/{etcd,etcdctl} same as 3.6, no benchmark (see ETCD_BENCH);
#                                    optional: TESSERA_ETCD37=0 skips it, a failure only warns
#   DEST/versions.txt                module@version of every binary built
# usage: scripts/etcd-tools.sh [DEST]   (default: ~/.cache/tessera/tools)
set -euo pipefail
dest=${1:-$HOME/.cache/tessera/tools}
mkdir -p "$dest" && dest=$(cd "$dest" && pwd)
log=$dest/etcd-tools.log
SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo

# Pins. Debian bookworm's etcd; the newest 3.6/3.7/3.5 the Go module proxy serves.
DEB_ETCD=3.4.23-4                   # source version (binary packages are +bN rebuilds of it)
ETCD36=v3.6.16
ETCD37=v3.7.3
# tools/benchmark lives in etcd's root module go.etcd.io/etcd/v3, which the proxy
# serves only up to v3.6.8 (not 3.6.9+ nor 3.7): that benchmark source is built
# against 3.6.16's libraries. It does not compile against 3.7's pkg/v3 (report API
# changed), so 3.7 has no benchmark of its own: use the 3.6 one against it.
ETCD_BENCH=v3.6.8
ETCD_RUNNER=v3.5.35

# --- a. Debian's etcd 3.4 and its benchmark/etcd-runner --------------------------
deb34=$dest/etcd-3.4
if ! { [ -x "$deb34/bin/benchmark" ] && [ -x "$deb34/bin/etcd-runner" ] &&
       dpkg -s etcd-server etcd-client golang-1.19-go golang-etcd-server-dev >/dev/null 2>&1; }; then
  export DEBIAN_FRONTEND=noninteractive
  need=()
  for p in etcd-server etcd-client golang-1.19-go golang-etcd-server-dev; do
    dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
  done
  if [ ${#need[@]} -gt 0 ]; then
    # etcd-server's maintainer script would start a system etcd on :2379. A policy-rc.d
    # that answers 101 ("forbidden") makes invoke-rc.d / deb-systemd-invoke skip the
    # start, so nothing needs stopping afterwards (and no one else's etcd is touched).
    pol=/usr/sbin/policy-rc.d
    if [ -e "$pol" ]; then $SUDO mv "$pol" "$pol.tessera-saved"; fi
    trap '$SUDO rm -f "$pol"; [ ! -e "$pol.tessera-saved" ] || $SUDO mv "$pol.tessera-saved" "$pol"' EXIT
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$pol" >/dev/null && $SUDO chmod 755 "$pol"
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >>"$log" 2>&1 \
      || { cat "$log" >&2; exit 1; }
    $SUDO sh -c "rm -f $pol; [ ! -e $pol.tessera-saved ] || mv $pol.tessera-saved $pol"
    trap - EXIT
  fi
  # golang-etcd-server-dev has functional/ (etcd-runner) but Debian strips tools/
  # (benchmark) from it; the source package has it. Fetch it with a private deb-src list and apt state under DEST,
  # so the machine's apt configuration is left as it was.
  apt=$deb34/apt
  mkdir -p "$apt/lists/partial" "$apt/parts" "$apt/dl" "$deb34/bin"
  if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    sed 's/^Types: deb$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources > "$apt/parts/src.sources"
  else
    sed -n 's/^deb /deb-src /p' /etc/apt/sources.list > "$apt/parts/src.list"
  fi
  aopt=(-o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$apt/parts"
        -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt/cache" -o APT::Sandbox::User=root -qq)
  if [ ! -d "$deb34/src" ]; then
    apt-get "${aopt[@]}" update
    (cd "$apt/dl" && apt-get "${aopt[@]}" source --download-only "etcd=$DEB_ETCD" >/dev/null)
    mkdir -p "$deb34/src"
    tar xzf "$apt/dl/etcd_${DEB_ETCD%-*}.orig.tar.gz" -C "$deb34/src" --strip-components=1 \
      --wildcards '*/tools/benchmark'
  fi
  # GOPATH-mode build with Debian's Go 1.19 against Debian's Go libraries
  # (/usr/share/gocode), which is how Debian builds etcd 3.4 itself.
  gp=$deb34/gopath
  mkdir -p "$gp/src/go.etcd.io/etcd/tools"
  cp -r "$deb34/src/tools/benchmark" "$gp/src/go.etcd.io/etcd/tools/"
  ( export GO111MODULE=off GOPATH="$gp:/usr/share/gocode" GOPROXY=off GOFLAGS="-p=1" \
           GOCACHE="$deb34/gocache" GOTOOLCHAIN=local
    nice -n 15 /usr/lib/go-1.19/bin/go build -o "$deb34/bin/benchmark" go.etcd.io/etcd/tools/benchmark
    nice -n 15 /usr/lib/go-1.19/bin/go build -o "$deb34/bin/etcd-runner" go.etcd.io/etcd/functional/cmd/etcd-runner )
fi

# --- b. etcd 3.5/3.6/3.7 through the Go module proxy -------------------------------
# `go install mod@ver` refuses modules whose go.mod has replace directives (etcd's
# do), so each set gets a throw-away main module that requires the etcd modules and
# `go build`s their main packages. Everything (module cache, build cache) is under
# DEST, so nothing lands in the checkout and a re-run reuses it.
export PATH=/usr/local/go/bin:$PATH GOTOOLCHAIN=${GOTOOLCHAIN:-local} GOPROXY=${GOPROXY:-https://proxy.golang.org}
export GOPATH=$dest/go GOMODCACHE=$dest/go/pkg/mod GOCACHE=$dest/go/cache GOFLAGS="-mod=mod -p=1 -trimpath" CGO_ENABLED=0
# go_set DIR "module@version ..." "name=package ...": builds DIR/bin/name for each.
go_set() {
  local dir=$dest/$1 mods=$2 pkgs=$3 p ok=1
  for p in $pkgs; do [ -x "$dir/bin/${p%%=*}" ] || ok=; done
  [ -n "$ok" ] && [ "$(cat "$dir/pins" 2>/dev/null)" = "$mods $pkgs" ] && return 0
  rm -rf "$dir" && mkdir -p "$dir/mod" "$dir/bin"
  # (explicit `|| exit 1`: set -e is off inside a function called from `cmd || ...`)
  ( cd "$dir/mod" || exit 1
    printf 'module tessera.local/%s\n\ngo 1.26\n' "$1" > go.mod
    nice -n 15 go get $mods || exit 1
    for p in $pkgs; do nice -n 15 go build -o "$dir/bin/${p%%=*}" "${p#*=}" || exit 1; done
  ) >>"$log" 2>&1 || { echo "etcd-tools: building $1 failed, see $log" >&2; tail -n 20 "$log" >&2; return 1; }
  echo "$mods $pkgs" > "$dir/pins"
}
e=go.etcd.io/etcd
go_set etcd-3.6 "$e/server/v3@$ETCD36 $e/etcdctl/v3@$ETCD36 $e/v3@$ETCD_BENCH" \
  "etcd=$e/server/v3 etcdctl=$e/etcdctl/v3 benchmark=$e/v3/tools/benchmark"
go_set etcd-3.5 "$e/tests/v3@$ETCD_RUNNER" "etcd-runner=$e/tests/v3/functional/cmd/etcd-runner"
if [ "${TESSERA_ETCD37:-1}" != 0 ]; then
  go_set etcd-3.7 "$e/server/v3@$ETCD37 $e/etcdctl/v3@$ETCD37" "etcd=$e/server/v3 etcdctl=$e/etcdctl/v3" \
    || echo "etcd-tools: etcd 3.7 is optional, going on without it" >&2
fi

# --- c. versions.txt: what each binary really is (read back from the binaries) ----
{
  echo "/usr/bin/etcd /usr/bin/etcdctl: Debian etcd-server/etcd-client $(dpkg-query -W -f '${Version}' etcd-server)"
  for b in "$deb34"/bin/*; do echo "etcd-3.4/bin/${b##*/}: go.etcd.io/etcd (Debian source etcd $DEB_ETCD, GOPATH build, $(/usr/lib/go-1.19/bin/go version | cut -d' ' -f3))"; done
  for b in "$dest"/etcd-3.[5-9]/bin/*; do
    go version -m "$b" | awk -v b="${b#"$dest"/}" '$1=="path"{p=$2} $1=="mod"{m=$2"@"$3} $1=="dep"&&$2=="go.etcd.io/etcd/client/v3"{c=" (client/v3@"$3")"} NR==1{g=$2} END{print b": "p" from "m c", "g}'
  done
} > "$dest/versions.txt"
