#!/usr/bin/env bash
# Istio in a box (tests/istio, issue #32): what `wasmpack manifests` renders, translated by
# istiod's own code (Istio's in-process FakeDiscoveryServer, istio.io/istio pinned in
# tests/istio/go.mod), and the sidecar config istiod generates run in real Envoy 1.40 with the
# filter. Needs Go (1.26+), target/debug/wasmpack, the release model_router.wasm and Envoy in
# .venv (scripts/test.sh builds and installs those first). Installs nothing itself: Go fetches the
# pinned modules (go.sum) into its module cache on the first run.
# Fresh machine: ~12.5 min to compile Istio's packages once; afterwards Go's build cache makes it
# about a minute (docs/reach.md).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v go >/dev/null 2>&1; then
  echo "test-istio: Go is not installed (1.26 or newer is needed: https://go.dev/dl/); this script installs nothing" >&2
  exit 1
fi
for f in target/debug/wasmpack target/wasm32-wasip1/release/model_router.wasm; do
  if [ ! -e "$f" ]; then
    echo "test-istio: $f is missing (cargo build -p wasmpack; cargo build -p model-router --release --target wasm32-wasip1)" >&2
    exit 1
  fi
done
echo "== Istio in a box: $(go version), istio.io/istio@$(grep -m1 -o 'istio.io/istio v[^ ]*' tests/istio/go.mod | cut -d' ' -f2)"
cd tests/istio
start=$(date +%s)
log=$(mktemp)
status=0
GOFLAGS=-mod=readonly go test -count=1 -v ./... >"$log" 2>&1 || status=$?
# istiod's own logging is long: show the tests' lines; on a failure, everything but istiod's log.
if [ "$status" -eq 0 ]; then
  grep -E '^(\s*--- |PASS|ok)|^\s+[a-z_]+_test\.go:' "$log" || true
else
  grep -vE '^[0-9]{4}-[0-9]{2}-[0-9]{2}T' "$log" | tail -n 300
fi
rm -f "$log"
echo "test-istio: $(( $(date +%s) - start ))s, exit $status"
exit "$status"
