#!/usr/bin/env bash
# Chaos soak: N randomized runs (random seeds) across every fault kind,
# against a federation and a standalone group alternately. Prints a
# markdown results table (runs, faults by kind, ops, violations, write
# failures, progress freshness p99) and every failing run with the command
# that replays it; failing runs' histories, reports and logs are kept
# under the directory it prints. Exits non-zero if any run failed.
#
#   scripts/chaos-soak.sh 40                       # 40 runs of 20 s
#   CHAOS_SOAK_SECONDS=30 CHAOS_SOAK_SEED=1234 scripts/chaos-soak.sh 10
#   CHAOS_SOAK_TARGETS=standalone scripts/chaos-soak.sh 10   # or federation, or both (default)
#   CHAOS_SOAK_BIN=/tmp/frozen scripts/chaos-soak.sh 100   # binaries built (and copied) before: no build,
#                                                          # so the tree can be rebuilt while it runs
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
n="${1:?usage: scripts/chaos-soak.sh N}"
seconds="${CHAOS_SOAK_SECONDS:-20}"
base="${CHAOS_SOAK_SEED:-$(( (RANDOM << 15 | RANDOM) * 1000 ))}"
targets="${CHAOS_SOAK_TARGETS:-both}"

if ! ls /usr/lib/*/faketime/libfaketime.so.1 >/dev/null 2>&1; then
  apt-get install -y faketime >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y faketime >/dev/null; }
fi
if [ -n "${CHAOS_SOAK_BIN:-}" ]; then
  export TESSERA_BIN="$CHAOS_SOAK_BIN"
else
  cargo build --workspace --bins --features "$TESSERA_TEST_FEATURES" >&2
fi

out="${CHAOS_SOAK_DIR:-$(mktemp -d /tmp/chaos-soak.XXXXXX)}"
mkdir -p "$out/reports" "$out/runs"
echo "chaos soak: $n runs of ${seconds}s from seed $base; reports and failing runs under $out" >&2

# Each kind alone, then everything at once; each kind meets both targets in turn.
kinds=(kill pause isolate split cut delay loss skew crash disk move multi all)
failed=0
incomplete=()
for i in $(seq 1 "$n"); do
  seed=$((base + i))
  case "$targets" in
    federation) groups=3 ;;
    standalone) groups=0 ;;
    *) if [ $((i % 2)) -eq 1 ]; then groups=3; else groups=0; fi ;;
  esac
  k="${kinds[$(( (i - 1) / 2 % ${#kinds[@]} ))]}"
  started=$(date +%s)
  if "$TESSERA_BIN/chaos" run --groups "$groups" --seed "$seed" --seconds "$seconds" --faults "$k" --fault-every 3 \
    --artifacts "$out/runs" --json >"$out/reports/$i.json" 2>"$out/reports/$i.stderr"; then
    verdict=pass
  else
    verdict=FAIL
    failed=$((failed + 1))
  fi
  if [ ! -s "$out/reports/$i.json" ]; then
    rm -f "$out/reports/$i.json"
    why=$(tail -n 3 "$out/reports/$i.stderr" | tr '\n' ' ')
    incomplete+=("run $i (chaos run --groups $groups --seed $seed --seconds $seconds --faults $k): $why")
  fi
  echo "run $i/$n: groups=$groups faults=$k seed=$seed: $verdict ($(( $(date +%s) - started )) s)" >&2
done
shopt -s nullglob
reports=("$out"/reports/*.json)
echo "## Chaos soak: $n runs of ${seconds} s, seeds $((base + 1))..$((base + n))"
echo
if [ ${#reports[@]} -gt 0 ]; then
  "$TESSERA_BIN/chaos" table "${reports[@]}"
fi
for r in "${incomplete[@]}"; do
  echo "- did not complete: $r"
done
echo
echo "Failing runs' logs, history.json and report.txt: $out/runs"
[ "$failed" -eq 0 ]
