#!/usr/bin/env bash
# Installs npm etcd3 (pinned by router/tests/npm/package-lock.json) for the
# test that runs its Lock, Election and STM through the router, cached
# outside the checkout: DEST/npm-etcd3/node_modules (re-run when the lock
# file changes; instant and quiet otherwise). Installs node and npm from
# Debian if missing.
# usage: scripts/npm-tools.sh [DEST]   (default: ~/.cache/tessera/tools)
set -euo pipefail
cd "$(dirname "$0")/.."
dest=${1:-$HOME/.cache/tessera/tools}/npm-etcd3
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
fi
src=router/tests/npm
if [ -d "$dest/node_modules" ] && cmp -s "$src/package-lock.json" "$dest/package-lock.json"; then
  exit 0
fi
mkdir -p "$dest"
cp "$src/package.json" "$src/package-lock.json" "$dest/"
(cd "$dest" && npm ci --no-audit --no-fund --loglevel=error >npm.log 2>&1) || { cat "$dest/npm.log" >&2; exit 1; }
