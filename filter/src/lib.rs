//! model-router: a proxy-wasm HTTP filter that makes Envoy model-aware.
//!
//! Everything but `abi`, `glue` and `host` is host-free and tested on the native target. The whole
//! per-request protocol is `exchange::Stream`, driven through the `exchange::Host` trait; `glue`
//! (wasm32 only) implements that trait with proxy-wasm calls and holds no logic of its own, and
//! `memory_host` implements it in memory for tests, benches and `wasmpack route`.

pub mod config;
pub mod decide;
pub mod eventstream;
pub mod exchange;
pub mod fast_hash;
pub mod form_scan;
pub mod header_map;
pub mod hold;
pub mod identity;
pub mod json;
pub mod json_scan;
pub mod json_seq;
pub mod memory_host;
pub mod models;
pub mod path_model;
pub mod policy;
pub mod proto;
pub mod reply;
pub mod request;
pub mod restore;
pub mod rls;
pub mod routing;
pub mod scope;
pub mod sse;
pub mod telemetry;
pub mod usage;

// The proxy-wasm module (wasm32-wasip1); other wasm32 builds (the browser playground) use the
// core only.
#[cfg(all(target_arch = "wasm32", target_os = "wasi"))]
mod abi;
#[cfg(all(target_arch = "wasm32", target_os = "wasi"))]
mod glue;
#[cfg(all(target_arch = "wasm32", target_os = "wasi"))]
mod host;
