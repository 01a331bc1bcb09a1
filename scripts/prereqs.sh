#!/usr/bin/env bash
# Installs what building Tessera needs on a fresh Debian machine with a Rust
# toolchain: clang/libclang (rocksdb's bindings); openssl, curl and python3 for
# the Kubernetes tests (kube-apiserver credentials, scripts/kube-storage-tests.sh); protoc for the
# etcd-client crate the tests use (Tessera's own protos use a vendored one). Idempotent; quiet when all
# is there. The reference tools the tests compare against (etcd, etcdctl,
# etcd's benchmark and etcd-runner) come from scripts/etcd-tools.sh.
set -euo pipefail
command -v cargo >/dev/null || { echo "cargo (a Rust toolchain, https://rustup.rs) is required" >&2; exit 1; }
need=()
for p in clang libclang-dev protobuf-compiler openssl curl python3; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $sudo_cmd env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
