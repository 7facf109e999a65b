#!/usr/bin/env -S node --no-warnings
// Runs a Rust test binary built for wasm32-wasip1 in node's V8, the engine Envoy embeds, so the
// filter core's unit tests also run as the module does in production (32-bit pointers, the SIMD
// paths built with `simd128`). It is cargo's runner for that target (`.cargo/config.toml`), so
// scripts/test.sh runs, from anywhere in the workspace:
//
//   cargo test -p model-router --lib --target wasm32-wasip1 --release
//
// The proxy-wasm host functions the module imports are stubs that throw: unit tests never call
// them. A test that fails aborts the whole binary (Wasm has no unwinding), so the tests run with
// their output shown (`--nocapture`) to leave the failing test's message on the screen.
'use strict';
const fs = require('fs');
const { WASI } = require('node:wasi');

const [file, ...args] = process.argv.slice(2);
if (!file) {
  console.error('usage: scripts/wasm-test-runner.cjs TEST.wasm [test arguments]');
  process.exit(2);
}
const testArgs = args.includes('--nocapture') ? args : [...args, '--nocapture'];
const wasi = new WASI({ version: 'preview1', args: [file, ...testArgs], env: {}, preopens: {}, returnOnExit: true });
const wasm = new WebAssembly.Module(fs.readFileSync(file));
const imports = wasi.getImportObject();
for (const imp of WebAssembly.Module.imports(wasm)) {
  if (imp.kind !== 'function') continue;
  imports[imp.module] ??= {};
  imports[imp.module][imp.name] ??= () => {
    throw new Error(`${imp.module}.${imp.name} called by a unit test (no proxy here)`);
  };
}
const instance = new WebAssembly.Instance(wasm, imports);
// The filter is a WASI reactor (it exports `_initialize`); a test binary is a command: start it
// by `_start` alone.
const { memory, _start } = instance.exports;
try {
  process.exitCode = wasi.start({ exports: { memory, _start } });
} catch (e) {
  console.error(`\n${file}: a test failed inside Wasm (${e.message}); its message is above`);
  process.exitCode = 101;
}
