#!/usr/bin/env bash
# Fuzzes every decoder of what clients and the store send (fuzz/): gRPC KV
# requests (protobuf) through etcd's checks and the txn tree, the JSON
# gateway's unary and streaming bodies, and the shard map with routing.
# libFuzzer through cargo-fuzz on the stable toolchain (coverage only, no
# sanitizer: the code is safe Rust; a panic, an abort or > 1 GiB RSS fails).
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]   (default 30 s, every target)
# The corpus grows under ~/.cache/tessera/fuzz/corpus (seeded from fuzz/seeds);
# a failing input is kept under ~/.cache/tessera/fuzz/artifacts and printed.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-30}"
shift || true
cache="$HOME/.cache/tessera"
export CARGO_TARGET_DIR="$cache/fuzz-target"
# cargo-fuzz, pinned, built once into the cache.
fuzz_bin="$cache/tools/cargo-fuzz-0.13.2/bin"
if [ ! -x "$fuzz_bin/cargo-fuzz" ]; then
  cargo install -q cargo-fuzz --version 0.13.2 --locked --root "$cache/tools/cargo-fuzz-0.13.2" >&2
fi
export PATH="$fuzz_bin:$PATH"
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=($(sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/Cargo.toml | grep -v tessera-fuzz))
cd fuzz
cargo fuzz build -s none >&2
printf '| target | seconds | runs | corpus | result |\n|---|---:|---:|---:|---|\n'
failed=0
for t in "${targets[@]}"; do
  corpus="$cache/fuzz/corpus/$t" artifacts="$cache/fuzz/artifacts/$t/"
  mkdir -p "$corpus" "$artifacts"
  log="$(mktemp)"
  if cargo fuzz run -s none "$t" "$corpus" seeds/"$t" -- -max_total_time="$seconds" -rss_limit_mb=1024 \
    -max_len=65536 -timeout=10 -artifact_prefix="$artifacts" -print_final_stats=1 >"$log" 2>&1; then
    result=ok
  else
    result="FAILED (see below)"
    failed=1
  fi
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  printf '| %s | %s | %s | %s | %s |\n' "$t" "$seconds" "${runs:-?}" "$(ls "$corpus" | wc -l)" "$result"
  if [ "$result" != ok ]; then
    tail -n 40 "$log" >&2
  fi
  rm -f "$log"
done
exit $failed
