#!/usr/bin/env bash
# Runs the whole test suite (unit + integration against real processes,
# etcdctl and real etcd side by side). Installs prerequisites first.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/prereqs.sh
# etcd's own benchmark and etcd-runner tools, for the side-by-side tests.
bash "$(pwd)/../shared/tools/etcd-peers.sh" "$HOME/.cache/etcd-peers/bin" >/dev/null
. scripts/env.sh
cargo build --workspace --bins
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@"
else
  cargo test --workspace --no-fail-fast "$@"
fi
