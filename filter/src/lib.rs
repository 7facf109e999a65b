//! model-router: a proxy-wasm HTTP filter that makes Envoy model-aware.
//!
//! Everything but `abi`, `glue` and `host` is host-free and tested on the native target. The whole
//! per-request protocol is `exchange::Stream`, driven through the `exchange::Host` trait; `glue`
//! (wasm32 only) implements that trait with proxy-wasm calls and holds no logic of its own, and
//! `memory_host` implements it in memory for tests, benches and `wasmpack route`.

// An index or slice out of bounds traps the VM: every `x[i]` outside tests is checked (`get`,
// iterators, patterns) or carries a narrow allow with the reason its bound holds.
#![deny(clippy::indexing_slicing)]

pub mod config;
#[cfg(any(test, feature = "decide"))]
pub mod decide;
mod eventstream;
pub mod exchange;
mod failover;
// The glue's maps (wasm32-wasip1), and its tests.
#[cfg(any(test, all(target_arch = "wasm32", target_os = "wasi")))]
mod fast_hash;
mod form_scan;
mod header_map;
mod health;
mod hold;
mod identity;
pub mod json;
pub mod json_scan;
mod json_seq;
#[cfg(any(test, feature = "decide"))]
pub mod memory_host;
mod models;
pub mod path_model;
mod policy;
mod proto;
pub mod reply;
pub mod request;
pub mod restore;
mod rls;
mod routing;
mod scope;
mod sse;
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
