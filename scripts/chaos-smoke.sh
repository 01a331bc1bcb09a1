#!/usr/bin/env bash
# Chaos smoke: fixed seeds and fault kinds against a federation and a
# standalone group, each run checked by every checker (and, on one run,
# every mutation of its history must be caught). At most ~3 minutes on a
# 2-core machine. Exits non-zero on any violation, printing each failing
# run's report, the command that replays it, and where its logs and
# history are kept. Builds what it needs (cached) and installs libfaketime
# (Debian's faketime package) for clock skew.
#
#   scripts/chaos-smoke.sh            # all runs
#   CHAOS_SMOKE_DIR=/tmp/x scripts/chaos-smoke.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh

if ! ls /usr/lib/*/faketime/libfaketime.so.1 >/dev/null 2>&1; then
  apt-get install -y faketime >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y faketime >/dev/null; }
fi
cargo build --workspace --bins --features "$TESSERA_TEST_FEATURES"

out="${CHAOS_SMOKE_DIR:-$(mktemp -d /tmp/chaos-smoke.XXXXXX)}"
mkdir -p "$out/reports" "$out/runs"
echo "chaos smoke: reports and failing runs under $out" >&2

# groups seed seconds faults [extra] (groups 0: a standalone group): every
# fault kind meets a federation and a standalone group; faults follow each
# other closely (--fault-every 1) so each listed kind is injected.
runs=(
  "3 101 22 kill,pause,isolate"
  "0 102 14 split,cut,delay"
  "3 103 22 loss,skew,multi"
  "0 104 14 kill,pause,isolate,loss --mutate all"
  "0 105 14 skew,multi,cut"
  "3 106 16 crash,disk,kill,move"
  "0 107 14 crash,disk"
  "3 108 20 kill,pause,isolate,move --auth"
)
failed=0
i=0
for r in "${runs[@]}"; do
  i=$((i + 1))
  read -r groups seed seconds faults extra <<<"$r"
  # shellcheck disable=SC2086 # $extra is flags
  if ! "$TESSERA_BIN/chaos" run --groups "$groups" --seed "$seed" --seconds "$seconds" --faults "$faults" \
    --fault-every 1 --artifacts "$out/runs" --json $extra >"$out/reports/$i.json" 2>"$out/reports/$i.stderr"; then
    failed=$((failed + 1))
    echo "--- run $i FAILED: chaos run --groups $groups --seed $seed --seconds $seconds --faults $faults $extra" >&2
    tail -n 40 "$out/reports/$i.stderr" >&2
  fi
  [ -s "$out/reports/$i.json" ] || rm -f "$out/reports/$i.json"
done
"$TESSERA_BIN/chaos" table "$out"/reports/*.json
if [ "$failed" -gt 0 ]; then
  echo "chaos smoke: $failed of $i runs failed (details above; logs and histories under $out/runs)" >&2
  exit 1
fi
echo "chaos smoke: all $i runs passed" >&2
rm -rf "$out"
