#!/usr/bin/env bash
# Builds the Go program in SRC (a module of this repository, pinned by its
# go.mod/go.sum) once per version of its sources, cached outside the
# checkout with the Go tools' module cache: DEST/NAME/<hash>/NAME, and
# DEST/NAME/current → the latest. Prints the binary's path.
# usage: scripts/go-tool.sh SRC NAME [DEST]   (DEST default: ~/.cache/tessera/tools)
set -euo pipefail
src=$(cd "$1" && pwd) name=$2 dest=${3:-$HOME/.cache/tessera/tools}
key=$(cat "$src/go.mod" "$src/go.sum" "$src"/*.go | sha256sum | cut -c1-16)
bin=$dest/$name/$key/$name
if ! [ -x "$bin" ]; then
  rm -rf "${dest:?}/$name" && mkdir -p "$(dirname "$bin")"   # older builds go
  (
    cd "$src"
    export PATH=/usr/local/go/bin:$PATH GOTOOLCHAIN=${GOTOOLCHAIN:-local} GOPROXY=${GOPROXY:-https://proxy.golang.org}
    export GOPATH=$dest/go GOMODCACHE=$dest/go/pkg/mod GOCACHE=$dest/go/cache
    export GOFLAGS="-mod=readonly -p=1 -trimpath" CGO_ENABLED=0
    nice -n 15 go build -o "$bin.tmp" . && mv "$bin.tmp" "$bin"
  ) >&2 || { echo "building $src failed" >&2; exit 1; }
  ln -sfn "$key" "$dest/$name/current"
fi
echo "$bin"
