#!/usr/bin/env bash
# The demo: installs what is missing, builds model_router.wasm and wasmpack, starts local
# OpenAI-compatible backends and `wasmpack run` (real Envoy 1.40 with the filter), sends a mix of
# real requests, and prints `wasmpack stats` (per-model routing and token metrics).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "== building model_router.wasm and wasmpack (the first build takes a few minutes)"
cargo build -q -p model-router --release --target wasm32-wasip1
cargo build -q -p wasmpack
cargo build -q -p e2e --bin demo
echo "== running the demo"
cargo run -q -p e2e --bin demo
