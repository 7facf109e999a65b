#!/usr/bin/env bash
# The demo: installs what is missing, builds model_router.wasm, starts real Envoy 1.40 with it in
# front of local OpenAI-compatible backends, sends a mix of requests and prints the per-model
# routing and token metrics.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "== building model_router.wasm"
cargo build -q -p model-router --release --target wasm32-wasip1
echo "== building and running the demo"
cargo run -q -p e2e --bin demo
