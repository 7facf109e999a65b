//! `wasmpack build`: cargo for the filter, then the module checks.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::cli::BuildArgs;
use crate::module;

/// wasm-opt flags for rustc's wasm32 output (its post-MVP features must be enabled explicitly;
/// SIMD because the filter is built with `+simd128`, see `.cargo/config.toml`). A function with
/// one caller is inlined into it only when small: V8 compiles every function when Envoy loads
/// the module, and that memory, which Envoy's allocator keeps, grows with function size
/// (docs/packaging.md, "Small functions"). scripts/bench.sh uses the same flags.
pub const WASM_OPT_FLAGS: &[&str] = &[
    "-O3",
    "--one-caller-inline-max-function-size",
    "100",
    "--strip-debug",
    "--enable-simd",
    "--enable-bulk-memory",
    "--enable-sign-ext",
    "--enable-nontrapping-float-to-int",
    "--enable-mutable-globals",
];

pub fn run(args: &BuildArgs) -> Result<()> {
    let workspace = args
        .workspace
        .canonicalize()
        .with_context(|| format!("workspace {}", args.workspace.display()))?;
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "-p", "model-router", "--release", "--target", "wasm32-wasip1"])
        .current_dir(&workspace)
        .status()
        .context("running cargo (is the Rust toolchain installed?)")?;
    if !status.success() {
        bail!("cargo build of the filter failed ({status})");
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| workspace.join("target"));
    let mut path = target.join("wasm32-wasip1/release/model_router.wasm");
    let mut info = check_file(&path)?;
    let unoptimised = info.size;
    if args.opt {
        let out = path.with_file_name("model_router.opt.wasm");
        optimise(&path, &out)?;
        path = out;
        info = check_file(&path).context("the optimised module")?;
    }
    if let Some(max) = args.max_size {
        if info.size as u64 > max {
            bail!(
                "{} is {} bytes, over the --max-size budget of {max} bytes",
                path.display(),
                info.size
            );
        }
    }
    if args.json || args.output == crate::cli::Output::Json {
        let v = serde_json::json!({
            "path": path,
            "size": info.size,
            "sha256": info.sha256,
            "abiVersions": info.abi_versions,
            "optimized": args.opt,
            "unoptimizedSize": unoptimised,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("{}", path.display());
        println!(
            "size: {} bytes{}",
            info.size,
            if args.opt {
                format!(" ({unoptimised} before wasm-opt)")
            } else {
                String::new()
            }
        );
        println!("abi: {}", info.abi_versions.join(", "));
        println!("{}", info.sha256);
    }
    Ok(())
}

pub fn check_file(path: &Path) -> Result<module::ModuleInfo> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    module::check(&bytes).with_context(|| format!("{} is not a loadable proxy-wasm module", path.display()))
}

pub fn optimise(input: &Path, output: &Path) -> Result<()> {
    let out = Command::new("wasm-opt")
        .args(WASM_OPT_FLAGS)
        .arg(input)
        .arg("-o")
        .arg(output)
        .output()
        .context("running wasm-opt: install it with `apt-get install binaryen` (scripts/setup.sh does)")?;
    if !out.status.success() {
        bail!("wasm-opt failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::WASM_OPT_FLAGS;

    /// The benchmark measures the module `wasmpack build --opt` ships.
    #[test]
    fn the_benchmark_optimises_with_the_same_flags() {
        let script = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/bench.sh")).unwrap();
        let flags = WASM_OPT_FLAGS[1..].join(" ");
        assert!(
            script.contains(&format!("FLAGS=\"{flags}\"")),
            "scripts/bench.sh FLAGS differ from {flags}"
        );
        assert!(script.contains("wasm-opt -O3 $FLAGS"));
    }
}
