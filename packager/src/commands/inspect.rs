//! `wasmpack inspect REF`: layout, layers, module and whether Istio can load it.

use anyhow::{anyhow, Result};
use oci_client::Reference;
use serde_json::{json, Value};

use crate::cli::InspectArgs;
use crate::image::{self, Layout};
use crate::module;
use crate::registry::{parse_reference, Registry};

pub struct Fetched {
    pub layout: Layout,
    pub module: Vec<u8>,
}

/// The module of an image, read the way Istio's agent reads it; blob digests verified.
pub async fn fetch_module(registry: &Registry, reference: &Reference, manifest: &[u8]) -> Result<Fetched> {
    let m: Value = serde_json::from_slice(manifest).map_err(|e| anyhow!("the manifest is not JSON: {e}"))?;
    let layout = image::istio_layout(&m).map_err(|e| anyhow!("Istio cannot load this image: {e}"))?;
    let layers = image::layers(&m);
    let desc = layers
        .get(layout.layer)
        .ok_or_else(|| anyhow!("missing layer {}", layout.layer))?;
    let blob = registry.blob(reference, &desc.digest).await?;
    let module = image::extract(&layout, &blob).map_err(|e| anyhow!("Istio cannot load this image: {e}"))?;
    Ok(Fetched { layout, module })
}

pub async fn run(args: &InspectArgs) -> Result<()> {
    let reference = parse_reference(&args.reference)?;
    let registry = Registry::connect(&args.registry.opts(), &reference)?;
    let (manifest, digest) = registry.manifest(&reference).await?;
    let m: Value = serde_json::from_slice(&manifest).map_err(|e| anyhow!("the manifest is not JSON: {e}"))?;
    let layers = image::layers(&m);
    let verdict = match fetch_module(&registry, &reference, &manifest).await {
        Ok(f) => match module::check(&f.module) {
            Ok(info) => Ok((f.layout, info)),
            Err(e) => Err(format!("the module is not loadable by Envoy: {e}")),
        },
        Err(e) => Err(format!("{e:#}")),
    };
    if args.json || args.output == crate::cli::Output::Json {
        let mut v = json!({
            "reference": reference.to_string(),
            "digest": digest,
            "mediaType": image::manifest_media_type(&m),
            "layers": layers.iter().map(|l| json!({"mediaType": l.media_type, "size": l.size, "digest": l.digest})).collect::<Vec<_>>(),
            "annotations": m["annotations"],
            "istioCanLoad": verdict.is_ok(),
        });
        match &verdict {
            Ok((layout, info)) => {
                v["format"] = json!(layout.format);
                v["module"] = serde_json::to_value(info)?;
            }
            Err(reason) => v["reason"] = json!(reason),
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("reference: {reference}");
    println!("digest: {digest}");
    println!("media type: {}", image::manifest_media_type(&m));
    if let Ok((layout, _)) = &verdict {
        println!("format: {}", layout.format);
    }
    println!("layers:");
    for (i, l) in layers.iter().enumerate() {
        println!("  {i}: {} {} bytes {}", l.media_type, l.size, l.digest);
    }
    if let Some(a) = m["annotations"].as_object() {
        println!("annotations:");
        for (k, v) in a {
            println!("  {k}: {}", v.as_str().unwrap_or(""));
        }
    }
    match verdict {
        Ok((layout, info)) => {
            println!("module: {} ({} bytes)", info.sha256, info.size);
            println!("abi: {}", info.abi_versions.join(", "));
            println!("exports: {}", info.exports.join(", "));
            println!(
                "Istio can load it: yes, because the {} layout holds a valid proxy-wasm module",
                layout.format
            );
        }
        Err(reason) => println!("Istio can load it: no, because {reason}"),
    }
    Ok(())
}
