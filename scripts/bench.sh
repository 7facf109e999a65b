#!/usr/bin/env bash
# Benchmarks (docs/performance.md): the filter's cost in real Envoy (seven variants side by side,
# wrk load, CPU per request from /proc), criterion microbenchmarks of the core, and the module
# size before and after wasm-opt.   scripts/bench.sh [--smoke]   (--smoke: a short run that only
# checks that everything executes; CI runs it)
set -euo pipefail
cd "$(dirname "$0")/.."
SMOKE=""
[ "${1:-}" = "--smoke" ] && SMOKE="--smoke"
bash scripts/setup.sh >/dev/null
# The flags `wasmpack build --opt` uses (packager/src/commands/build.rs; a test keeps them equal).
FLAGS="--one-caller-inline-max-function-size 100 --strip-debug --enable-simd --enable-bulk-memory --enable-sign-ext --enable-nontrapping-float-to-int --enable-mutable-globals"
cargo build -q -p model-router -p floor-filter --release --target wasm32-wasip1
R=${CARGO_TARGET_DIR:-target}/wasm32-wasip1/release
wasm-opt -O3 $FLAGS $R/model_router.wasm -o $R/model_router.opt.wasm
wasm-opt -O3 $FLAGS $R/floor_filter.wasm -o $R/floor_filter.opt.wasm
echo "== module size"
echo "model_router.wasm: $(stat -c%s $R/model_router.wasm) bytes; after wasm-opt -O3: $(stat -c%s $R/model_router.opt.wasm) bytes (target <= 250000)"
echo "== machine"
echo "$(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/{print $2}') GiB; $(date -u +%F)"
echo "== Envoy: seven variants side by side"
# The runner only orchestrates (wrk makes the load), so the debug build is fine.
cargo run -q -p e2e --bin envoy-bench -- $SMOKE
echo "== criterion: the core"
if [ -n "$SMOKE" ]; then
  cargo bench -q -p model-router --bench core -- --test
else
  cargo bench -q -p model-router --bench core
fi
