#!/usr/bin/env bash
# Starts a local Tessera federation: placement, 4 shard-nodes hosting
# 3 groups × (3 voters + 1 learner), and a router serving etcd's API on
# 127.0.0.1:2379. Installs prerequisites and builds first. Extra arguments
# go to `tessera dev` (--groups, --replicas, --learners, --data-dir,
# --client-port). Data in ./.tessera-dev by default; running this again
# resumes it. Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/prereqs.sh
. scripts/env.sh
cargo build --bins
exec "$TESSERA_BIN/tessera" dev "$@"
