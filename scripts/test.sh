#!/usr/bin/env bash
# The full test suite: unit and property tests of the filter core, then end-to-end tests that run
# real Envoy 1.40 with the freshly built model_router.wasm. Installs what is missing first.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "== building model_router.wasm (release, wasm32-wasip1)"
cargo build -p model-router --release --target wasm32-wasip1
echo "== building wasmpack (the end-to-end tests drive the binary)"
cargo build -p wasmpack
echo "== clippy (no unwrap/expect/panic outside tests)"
cargo clippy --workspace --all-targets -q -- -D warnings
cargo clippy -p model-router --target wasm32-wasip1 --release -q -- -D warnings
echo "== tests"
cargo test --workspace --no-fail-fast
echo "== benchmarks, smoke mode (checks they run; numbers: scripts/bench.sh, docs/performance.md)"
bash scripts/bench.sh --smoke
