//! `wasmpack pull REF -o FILE`: fetch the module from any of Istio's three layouts, digests verified.

use anyhow::{Context, Result};

use crate::cli::PullArgs;
use crate::commands::inspect::fetch_module;
use crate::module;
use crate::registry::{parse_reference, Registry};

pub async fn run(args: &PullArgs) -> Result<()> {
    let reference = parse_reference(&args.reference)?;
    let registry = Registry::connect(&args.registry.opts(), &reference)?;
    let (manifest, digest) = registry.manifest(&reference).await?;
    let fetched = fetch_module(&registry, &reference, &manifest).await?;
    if args.output.as_os_str() == "-" {
        // The module on stdout (for a pipe); the report goes to stderr.
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        out.write_all(&fetched.module)
            .and_then(|_| out.flush())
            .context("writing the module to standard output")?;
        eprintln!(
            "wrote {} bytes ({}) from {reference} ({digest}, {} layout) to standard output",
            fetched.module.len(),
            module::digest(&fetched.module),
            fetched.layout.format
        );
        return Ok(());
    }
    std::fs::write(&args.output, &fetched.module).with_context(|| format!("writing {}", args.output.display()))?;
    println!(
        "wrote {} ({} bytes, {}) from {reference} ({digest}, {} layout)",
        args.output.display(),
        fetched.module.len(),
        module::digest(&fetched.module),
        fetched.layout.format
    );
    Ok(())
}
