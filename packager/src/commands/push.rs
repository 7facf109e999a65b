//! `wasmpack push FILE REF`: check the module, push it in an Istio-loadable layout, read it back
//! and verify it the way Istio's agent would. The manifest digest is the last line of stdout.

use std::collections::BTreeMap;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::cli::PushArgs;
use crate::commands::inspect::fetch_module;
use crate::image;
use crate::module;
use crate::registry::{parse_reference, Registry};

pub async fn run(args: &PushArgs) -> Result<()> {
    // Everything that can be refused locally is refused before any network I/O.
    let wasm = std::fs::read(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let info = module::check(&wasm).with_context(|| format!("{} is not a proxy-wasm module", args.file.display()))?;
    let reference = parse_reference(&args.reference)?;
    let extra: Vec<_> = args
        .tags
        .iter()
        .map(|t| {
            parse_reference(&format!(
                "{}/{}:{t}",
                reference.resolve_registry(),
                reference.repository()
            ))
        })
        .collect::<Result<_>>()?;
    let (created_unix, annotations) = annotations(args.git_annotations);
    let img = image::build(&wasm, args.format.format(), &annotations, created_unix);

    let registry = Registry::connect(&args.registry.opts(), &reference)?;
    let digest = registry.push(&reference, &img).await?;
    if digest != img.manifest_digest {
        bail!(
            "internal error: pushed manifest {digest} but built {}",
            img.manifest_digest
        );
    }
    for r in &extra {
        registry
            .put_manifest(r, &img.manifest)
            .await
            .with_context(|| format!("tagging {r}"))?;
    }

    // Read back by digest: the manifest must be byte-identical and the module must come out of
    // the layer Istio would read, byte for byte.
    let by_digest = parse_reference(&format!(
        "{}/{}@{digest}",
        reference.resolve_registry(),
        reference.repository()
    ))?;
    let (manifest, _) = registry.manifest(&by_digest).await.context("verifying the push")?;
    if manifest != img.manifest {
        bail!("verification failed: the registry returned a different manifest for {digest}");
    }
    let fetched = fetch_module(&registry, &by_digest, &manifest)
        .await
        .context("verifying the push")?;
    if fetched.module != wasm {
        bail!(
            "verification failed: the module read back differs from {}",
            args.file.display()
        );
    }

    println!("pushed {reference}");
    for r in &extra {
        println!("tagged {r}");
    }
    println!(
        "format: {} ({} layout for Istio)",
        serde_json::to_value(args.format.format())?.as_str().unwrap_or("?"),
        fetched.layout.format
    );
    println!(
        "module: {} ({} bytes, {})",
        info.sha256,
        info.size,
        info.abi_versions.join(", ")
    );
    println!("verified: manifest and module read back byte-identical; Istio can load it");
    println!("{digest}");
    Ok(())
}

/// Standard OCI annotations, reproducible by default: the same module gives the same manifest
/// digest on every push. `created` is SOURCE_DATE_EPOCH when set, else the Unix epoch (as ko
/// and jib do); the git source and revision only with `--git-annotations` (they change the
/// digest with every commit).
fn annotations(git_annotations: bool) -> (i64, BTreeMap<String, String>) {
    let created = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
        .unwrap_or(0);
    let stamp = chrono::DateTime::from_timestamp(created, 0)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default();
    let mut a = BTreeMap::from([("org.opencontainers.image.created".to_string(), stamp)]);
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .filter(|s| !s.is_empty())
    };
    if let Some(rev) = git(&["rev-parse", "HEAD"]).filter(|_| git_annotations) {
        a.insert("org.opencontainers.image.revision".into(), rev);
        if let Some(url) = git(&["config", "--get", "remote.origin.url"]) {
            a.insert("org.opencontainers.image.source".into(), url);
        }
    }
    a.insert("org.opencontainers.image.title".into(), "model-router".into());
    (created, a)
}
