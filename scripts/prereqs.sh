#!/usr/bin/env bash
# Installs what building and testing Tessera needs on a fresh Debian machine:
# clang/libclang (rocksdb's bindings), etcd's etcdctl and server (the
# reference the tests compare against). Idempotent; quiet when all is there.
set -euo pipefail
need=()
for p in clang libclang-dev etcd-client etcd-server; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  $sudo_cmd apt-get install -y -qq "${need[@]}" >/dev/null
fi
# Debian's etcd-server package starts a system etcd on 2379; the dev cluster
# and the tests need that port and their own etcd processes.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet etcd 2>/dev/null; then
  systemctl stop etcd || true
  systemctl disable etcd >/dev/null 2>&1 || true
fi
pkill -x etcd 2>/dev/null || true
command -v cargo >/dev/null || { echo "cargo (Rust toolchain) is required" >&2; exit 1; }
