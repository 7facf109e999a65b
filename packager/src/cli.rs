//! Command-line types only; the logic lives in `commands/`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::image::Format;
use crate::registry::RegistryOpts;

#[derive(Debug, Parser)]
#[command(
    name = "wasmpack",
    version,
    about = "Build, check, push and install the model-router Wasm filter for Istio and Envoy",
    after_help = "Exit status: 0 success, 1 failure (one message on stderr), 2 bad usage."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build model_router.wasm (release, wasm32-wasip1) and check its proxy-wasm ABI
    Build(BuildArgs),
    /// Push a Wasm module to an OCI registry in a layout Istio's agent loads, then verify it
    Push(PushArgs),
    /// Fetch the module of an image, verifying digests
    Pull(PullArgs),
    /// Show an image's layout, layers, module and whether Istio can load it
    Inspect(InspectArgs),
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Optimise with wasm-opt (Debian package binaryen) and check the result again
    #[arg(long)]
    pub opt: bool,
    /// Fail if the module is larger than this (bytes, or with a K/M suffix: 250K)
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_size: Option<u64>,
    /// Print the result as JSON
    #[arg(long)]
    pub json: bool,
    /// The workspace to build (the directory holding the root Cargo.toml)
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub workspace: PathBuf,
}

#[derive(Debug, Args)]
pub struct PushArgs {
    /// The Wasm module to push
    pub file: PathBuf,
    /// Image reference, e.g. registry.example.com/filters/model-router:1.0.0
    pub reference: String,
    /// Image layout
    #[arg(long, value_enum, default_value_t = Format::Image)]
    pub format: Format,
    /// Also tag the pushed manifest with these tags
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
    #[command(flatten)]
    pub registry: RegistryOpts,
}

#[derive(Debug, Args)]
pub struct PullArgs {
    /// Image reference (tag or @sha256:digest)
    pub reference: String,
    /// Where to write the module
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: PathBuf,
    #[command(flatten)]
    pub registry: RegistryOpts,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Image reference (tag or @sha256:digest)
    pub reference: String,
    /// Print the result as JSON
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub registry: RegistryOpts,
}

/// `250K`, `1M`, `262144`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&s[..s.len() - 1], 1024),
        Some('M') => (&s[..s.len() - 1], 1024 * 1024),
        _ => (s, 1),
    };
    num.trim()
        .parse::<u64>()
        .map(|n| n * mult)
        .map_err(|_| format!("`{s}` is not a size (bytes, or a number with K or M)"))
}
