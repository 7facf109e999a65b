#!/usr/bin/env bash
# Builds the browser playground into playground/dist/: the filter's core for wasm32-unknown-unknown,
# its JS glue from wasm-bindgen-cli (the version the crate pins), and the static page.
# `wasmpack playground` serves the result; it is also a static site to publish as is.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=$(grep -o 'wasm-bindgen = "=[0-9.]*"' playground/Cargo.toml | grep -o '[0-9][0-9.]*')
if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown; then
  echo "playground: adding the wasm32-unknown-unknown Rust target"
  rustup target add wasm32-unknown-unknown
fi
if ! command -v wasm-bindgen >/dev/null || [ "$(wasm-bindgen --version | awk '{print $2}')" != "$VERSION" ]; then
  echo "playground: installing wasm-bindgen-cli $VERSION (once; a few minutes)"
  # Not --locked: the registry mirror may lack a newer patch release its lock file names.
  cargo install -q wasm-bindgen-cli --version "$VERSION"
fi
cargo build -q -p playground --release --target wasm32-unknown-unknown
OUT=playground/dist
rm -rf "$OUT"
mkdir -p "$OUT/pkg"
wasm-bindgen --target web --no-typescript --out-dir "$OUT/pkg" "${CARGO_TARGET_DIR:-target}/wasm32-unknown-unknown/release/playground.wasm"
# No wasm-opt pass: it breaks wasm-bindgen's externref table (the page fails to start).
cp playground/web/index.html playground/web/app.js playground/web/style.css "$OUT/"
echo "playground: $OUT ($(du -sh "$OUT" | cut -f1); module $(stat -c%s "$OUT/pkg/playground_bg.wasm") bytes)"
