#!/usr/bin/env bash
# The full test suite: unit and property tests of the filter core, then end-to-end tests that run
# real Envoy 1.40 with the freshly built model_router.wasm. Installs what is missing first.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "== building model_router.wasm (release, wasm32-wasip1)"
cargo build -p model-router --release --target wasm32-wasip1
echo "== building the browser playground (its browser test loads it)"
bash scripts/build-playground.sh
cargo clippy -p playground --target wasm32-unknown-unknown --release -q -- -D warnings
echo "== building wasmpack (the end-to-end tests drive the binary)"
cargo build -p wasmpack
echo "== cargo fmt --check"
cargo fmt --check || { echo "test.sh: cargo fmt --check failed: run cargo fmt" >&2; exit 1; }
echo "== cargo deny check bans licenses sources (deny.toml; advisories need the network: README.md, Tests)"
cargo deny check bans licenses sources ||
  { echo "test.sh: cargo deny failed: a licence, a duplicate crate version or a source that deny.toml does not allow (see above)" >&2; exit 1; }
# Advisories need the RustSec database, which only `cargo deny check advisories` with GitHub
# reachable fetches: checked against it when this machine has one, and said when it has none.
if ls -d "${CARGO_HOME:-$HOME/.cargo}"/advisory-dbs/*/.git >/dev/null 2>&1; then
  db=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/advisory-dbs/*/ | head -1)
  echo "== cargo deny --offline check advisories (the database here is of $(git -C "$db" log -1 --format=%cs))"
  cargo deny --offline check advisories ||
    { echo "test.sh: cargo deny found an advisory for a crate in the tree (see above; deny.toml lists the ignored ones)" >&2; exit 1; }
else
  echo "== advisories NOT checked: no RustSec database on this machine (fetch it with \`cargo deny check advisories\` where GitHub is reachable: README.md, Tests)"
fi
echo "== clippy (no unwrap/expect/panic outside tests)"
cargo clippy --workspace --all-targets -q -- -D warnings
cargo clippy -p model-router --target wasm32-wasip1 --release -q -- -D warnings
echo "== tests"
log=$(mktemp)
status=0
# The steps that failed (a target that does not build or a script that fails has no test count).
failed_steps=()
step_failed() { status=$1; failed_steps+=("$2"); }
cargo test --workspace --no-fail-fast 2>&1 | tee "$log" || step_failed $? "cargo test --workspace"
echo "== the filter core's unit tests again, inside Wasm (node's V8, the engine Envoy embeds)"
cargo test -p model-router --lib --target wasm32-wasip1 --release 2>&1 | tee -a "$log" ||
  step_failed $? "the core's tests in Wasm"
echo "== Istio in a box: the renders through istiod's own code, its sidecar config in Envoy (tests/istio, Go)"
bash scripts/test-istio.sh || step_failed $? "scripts/test-istio.sh"
echo "== benchmarks, smoke mode (checks they run; numbers: scripts/bench.sh, docs/performance.md)"
bash scripts/bench.sh --smoke || step_failed $? "scripts/bench.sh --smoke"
# One closing line for the whole suite (cargo prints a result line per test binary).
summary=$(awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
               END { printf "%d passed, %d failed", p, f }' "$log")
targets=$(grep -E '^error: [0-9]+ targets? failed' "$log" | head -n1 || true)
rm -f "$log"
echo "tests: $summary"
if [ "$status" -ne 0 ]; then
  joined=$(printf '%s; ' "${failed_steps[@]}")
  echo "FAILED: ${joined%; }${targets:+ ($targets: see above)}"
fi
exit "$status"
