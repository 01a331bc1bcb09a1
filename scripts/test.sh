#!/usr/bin/env bash
# Runs the whole test suite: unit tests, and integration tests against real
# processes (shard-node groups, whole federations through `tessera dev`)
# with etcdctl, etcd's own tools and real etcd side by side. Installs every
# prerequisite first (cached outside the checkout). Extra arguments go to
# the test runner (cargo nextest, or cargo test).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/prereqs.sh
# Real etcd (3.4 from Debian, 3.6 through the Go module proxy) and etcd's
# benchmark and etcd-runner, for the side-by-side tests.
scripts/etcd-tools.sh "$HOME/.cache/tessera/tools" >/dev/null
# kube-apiserver and kubectl, for the Kubernetes-on-the-router tests.
scripts/kube-tools.sh "$HOME/.cache/tessera/tools" >/dev/null
# npm etcd3's and clientv3's Lock, Election and STM, run through the router.
scripts/npm-tools.sh "$HOME/.cache/tessera/tools"
scripts/go-tool.sh tests/go-recipes go-recipes "$HOME/.cache/tessera/tools" >/dev/null
. scripts/env.sh
# The house style: rustfmt.toml's width, and clippy with warnings as errors.
cargo fmt --all --check
# Test builds run with parking_lot's deadlock detector (a lock cycle aborts
# the process that hit it, and the test that ran it fails) and with the
# failpoints chaos arms (scripts/env.sh).
features=(--features "$TESSERA_TEST_FEATURES")
# A failed test's federation (data and every process's log) stays in /tmp
# for a look afterwards; the test's output names the directory.
export TESSERA_KEEP_FAILED=${TESSERA_KEEP_FAILED:-1}
cargo clippy --workspace --all-targets "${features[@]}" -- -D warnings
cargo build --workspace --bins "${features[@]}"
status=0
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "${features[@]}" "$@" || status=$?
else
  cargo test --workspace --no-fail-fast "${features[@]}" "$@" || status=$?
fi
# etcd 3.4's own e2e tests (auth, TLS, the gateway...) with shard-node as
# etcd; a failure not in tests/etcd-e2e/known-failures.txt fails the run.
scripts/etcd-e2e.sh || status=$?
# Every decoder fuzzed briefly (its corpus grows across runs, in the cache);
# the README has a longer run's result.
scripts/fuzz.sh "${TESSERA_FUZZ_SECONDS:-20}" || status=$?
exit $status
