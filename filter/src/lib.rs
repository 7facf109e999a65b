//! model-router: a proxy-wasm HTTP filter that makes Envoy model-aware.
//!
//! Everything but `glue` is host-free and tested on the native target; `glue` (wasm32 only) wires
//! the core to the proxy-wasm ABI and holds no logic of its own.

pub mod config;
pub mod header_map;
pub mod json_scan;
pub mod path_model;
pub mod policy;
pub mod reply;
pub mod request;
pub mod routing;
pub mod sse;
pub mod telemetry;
pub mod usage;

#[cfg(target_arch = "wasm32")]
mod abi;
#[cfg(target_arch = "wasm32")]
mod glue;
#[cfg(target_arch = "wasm32")]
mod host;
