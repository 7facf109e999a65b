#!/usr/bin/env bash
# The filter's own cost in V8, outside Envoy (docs/performance.md, "The module alone"): Node
# plays the proxy's side of the ABI and drives the benchmark's request through the module, with
# TurboFan only, as Envoy compiles it. Deterministic instruction counts come from valgrind.
#
#   scripts/bench-v8.sh                  # the current filter: µs and instructions per request
#   scripts/bench-v8.sh A.wasm B.wasm    # modules side by side (e.g. before and after a change)
#   scripts/bench-v8.sh --profile        # also the functions that take the time
#
# Needs node (Debian: nodejs) and valgrind (Debian: valgrind); a module built here keeps its
# function names (in a separate target directory; the release artifacts are not touched).
set -euo pipefail
cd "$(dirname "$0")/.."
PROFILE=""
[ "${1:-}" = "--profile" ] && { PROFILE=1; shift; }
command -v node >/dev/null || { echo "node is missing: apt-get install nodejs" >&2; exit 1; }
command -v valgrind >/dev/null || { echo "valgrind is missing: apt-get install valgrind" >&2; exit 1; }
command -v wasm-opt >/dev/null || { echo "wasm-opt is missing: apt-get install binaryen" >&2; exit 1; }
MODULES=("$@")
if [ ${#MODULES[@]} -eq 0 ]; then
  T=${CARGO_TARGET_DIR:-target}/v8-bench
  CARGO_TARGET_DIR=$T CARGO_PROFILE_RELEASE_STRIP=false cargo build -q -p model-router --release --target wasm32-wasip1
  # The flags of scripts/bench.sh (those `wasmpack build --opt` uses), keeping the names (-g).
  FLAGS=$(sed -n 's/^FLAGS="\(.*\)"$/\1/p' scripts/bench.sh)
  wasm-opt -O3 -g ${FLAGS/--strip-debug/} $T/wasm32-wasip1/release/model_router.wasm -o $T/model_router.named.wasm
  MODULES=("$T/model_router.named.wasm")
fi
H=bench/v8/harness.cjs
# Instructions per request: 4000 requests minus none, each after the same warm-up.
instructions() {
  local n
  n=$(WARM=2000 valgrind --tool=callgrind --smc-check=all-non-file --callgrind-out-file=/dev/null \
        node --no-liftoff $H "$1" "$2" 2>&1 | grep -oP 'refs:\s+\K[0-9,]+' | tr -d ,)
  echo "${n:?valgrind gave no count}"
}
echo "| module | µs/request (median of 5, noisy) | instructions/request (valgrind, steady) |"
echo "|---|---:|---:|"
for m in "${MODULES[@]}"; do
  times=$(for _ in 1 2 3 4 5; do node --no-liftoff $H "$m" 50000 | cut -d' ' -f1; done | sort -n | sed -n 3p)
  zero=$(instructions "$m" 0)
  many=$(instructions "$m" 4000)
  echo "| $(basename "$m") | $times | $(( (many - zero) / 4000 )) |"
done
node --no-liftoff $H "${MODULES[0]}" 1000 | cut -d';' -f2-
if [ -n "$PROFILE" ]; then
  dir=$(mktemp -d)
  node --no-liftoff --cpu-prof --cpu-prof-dir "$dir" --cpu-prof-interval 50 $H "${MODULES[0]}" 200000 >/dev/null
  echo "self time by function, ${MODULES[0]} (the harness's own JavaScript included: dv, give, count)"
  node bench/v8/profile.cjs "$dir"/*.cpuprofile 30
  rm -rf "$dir"
fi
