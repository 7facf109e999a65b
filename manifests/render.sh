#!/usr/bin/env bash
# Re-renders the examples in this directory. `cargo test -p wasmpack --test manifests` checks that
# the committed files equal what wasmpack renders, and validates them against the real schemas.
# OUT: where to write (default: these directories); WASMPACK: the binary (default: cargo run).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-manifests}
WASMPACK=${WASMPACK:-cargo run -q -p wasmpack --}
mkdir -p "$OUT/llm-gateway" "$OUT/ml-canary"
# An example digest: use the one `wasmpack push` prints for your image.
DIGEST=sha256:4f3c1e8a2b7d9c0e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e
$WASMPACK manifests --config manifests/llm-gateway/config.yaml \
  --image registry.example.com/ai/model-router@$DIGEST --namespace ai --gateway ai-gateway --offline \
  --hostname llm.example.com \
  --workload llama-3-8b-v1=llama-v1 --workload llama-3-8b-v2=llama-v2 --workload bge-small=embeddings \
  --egress-port 443 \
  > "$OUT/llm-gateway/install.yaml"
$WASMPACK manifests --config manifests/ml-canary/config.yaml \
  --image registry.example.com/ml/model-router@$DIGEST --namespace ml --selector app=checkout --offline \
  --allow-principal spiffe://cluster.local/ns/ml/sa/checkout --dependency app=feature-store --max-in-flight 8 \
  > "$OUT/ml-canary/install.yaml"
mkdir -p "$OUT/ambient-waypoint" "$OUT/envoy-gateway"
$WASMPACK manifests --config manifests/ambient-waypoint/config.yaml \
  --image registry.example.com/ai/model-router@$DIGEST --namespace ai --offline \
  --waypoint waypoint --service llm.ai.svc.cluster.local:8000 --extension-api traffic-extension \
  --workload resnet-v1=resnet-v1 --workload resnet-v2=resnet-v2 \
  > "$OUT/ambient-waypoint/install.yaml"
$WASMPACK manifests --config manifests/envoy-gateway/config.yaml \
  --image registry.example.com/ml/model-router@$DIGEST --namespace ml --offline \
  --envoy-gateway eg --hostname models.example.com --skip hpa,adapter-rules \
  > "$OUT/envoy-gateway/install.yaml"
