//! `wasmpack manifests`: render the installation as multi-document YAML, or one file per
//! resource plus a kustomization.yaml.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::cli::{ManifestsArgs, RenderArgs};
use crate::plugin_config::{self, Loaded};
use crate::registry::{parse_reference, Registry};
use crate::render::{self, Doc, Options, Target};

/// Loads the config, pins the image to its manifest digest, and renders.
pub async fn prepare(args: &RenderArgs, pull_secret: Option<String>) -> Result<(Loaded, Options, Vec<Doc>)> {
    let loaded = plugin_config::load(&args.config)?;
    let (repository, digest) = pin_image(args).await?;
    let target = match (&args.gateway, args.selector.is_empty()) {
        (Some(g), true) => Target::Gateway(g.clone()),
        (None, false) => Target::Selector(args.selector.iter().cloned().collect()),
        _ => bail!("give either --selector or --gateway"),
    };
    let dependencies = args
        .dependencies
        .iter()
        .map(|d| {
            d.split(',')
                .map(|kv| crate::cli::parse_label(kv).map_err(anyhow::Error::msg))
                .collect::<Result<BTreeMap<_, _>>>()
        })
        .collect::<Result<Vec<_>>>()?;
    let opts = Options {
        namespace: args.namespace.clone(),
        target,
        repository,
        digest,
        fail_open: args.fail_open,
        phase: args.phase.as_str().to_string(),
        priority: args.priority,
        pull_secret: pull_secret.or_else(|| args.pull_secret.clone()),
        workloads: args.workload.iter().cloned().collect(),
        max_in_flight: args.max_in_flight,
        min_replicas: args.min_replicas,
        max_replicas: args.max_replicas,
        principals: args.principals.clone(),
        dependencies,
    };
    let docs = render::render(&loaded.json, &loaded.config, &opts);
    Ok((loaded, opts, docs))
}

/// `registry/repository` and the manifest digest. A tag is resolved at the registry.
async fn pin_image(args: &RenderArgs) -> Result<(String, String)> {
    let reference = parse_reference(&args.image)?;
    let repository = format!("{}/{}", reference.registry(), reference.repository());
    if let Some(d) = reference.digest() {
        return Ok((repository, d.to_string()));
    }
    if args.offline {
        bail!("--offline needs the image pinned by digest (REF@sha256:…); `wasmpack push` prints it");
    }
    let registry = Registry::connect(&args.registry, &reference)?;
    let (_, digest) = registry
        .manifest(&reference)
        .await
        .with_context(|| format!("resolving {} to a digest", args.image))?;
    Ok((repository, digest))
}

pub fn to_yaml(value: &Value) -> Result<String> {
    Ok(serde_yaml::to_string(value)?)
}

fn commented(d: &Doc) -> Result<String> {
    let mut s: String = d.comment.lines().map(|l| format!("# {l}\n")).collect();
    s.push_str(&to_yaml(&d.value)?);
    Ok(s)
}

pub async fn run(args: &ManifestsArgs) -> Result<()> {
    let (loaded, opts, docs) = prepare(&args.render, None).await?;
    let stats = render::stats_annotations();
    let mut header = format!(
        "# Rendered by wasmpack manifests from {} for image {}@{}.\n\
         # Export the filter's metrics from the proxies it runs in with these pod annotations\n\
         # (with --out, kustomization.yaml patches them in):\n",
        args.render.config.display(),
        opts.repository,
        opts.digest
    );
    for (k, v) in &stats {
        header.push_str(&format!("#   {k}: {}\n", v.trim_end().replace('\n', "\n#     ")));
    }
    for (path, message) in plugin_config::warnings(&loaded.config) {
        eprintln!("warning: {path}: {message}");
    }
    match &args.out {
        None => {
            let mut out = header;
            for (i, d) in docs.iter().enumerate() {
                if i > 0 {
                    out.push_str("---\n");
                }
                out.push_str(&commented(d)?);
            }
            print!("{out}");
        }
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            for d in &docs {
                let p = dir.join(format!("{}.yaml", d.file));
                std::fs::write(&p, commented(d)?).with_context(|| format!("writing {}", p.display()))?;
            }
            let k = render::kustomization(&docs, &opts);
            let p = dir.join("kustomization.yaml");
            std::fs::write(&p, format!("{header}{}", to_yaml(&k)?))
                .with_context(|| format!("writing {}", p.display()))?;
            println!(
                "wrote {} resources and kustomization.yaml to {}",
                docs.len(),
                dir.display()
            );
        }
    }
    Ok(())
}
