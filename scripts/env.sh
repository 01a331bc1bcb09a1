# Sourced by the scripts: one build cache outside the checkout, shared by
# tests, the dev cluster and benches (rocksdb is built once).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tessera/target}"
export TESSERA_BIN="$CARGO_TARGET_DIR/debug"
export TESSERA_TOOLS="${TESSERA_TOOLS:-$HOME/.cache/tessera/tools}"
# The features of test builds (tests, chaos): parking_lot's deadlock detector,
# and the failpoints chaos arms (shard-node/src/failpoints.rs). One list, so
# every script builds the same binaries and none rebuilds another's.
export TESSERA_TEST_FEATURES="shard-node/deadlock-detection,shard-node/failpoints,router/failpoints,placement/failpoints"
