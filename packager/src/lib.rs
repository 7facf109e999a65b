//! wasmpack as a library: the pieces the binary is made of, also used by the end-to-end harness
//! (Envoy bootstrap, Prometheus parsing).

pub mod bootstrap;
pub mod cli;
pub mod commands;
pub mod image;
pub mod limitador;
pub mod module;
pub mod plugin_config;
pub mod prom;
pub mod registry;
pub mod render;
pub mod schema;
pub mod settings;
pub mod stats;
pub mod yaml;
