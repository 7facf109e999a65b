//! `wasmpack check CONFIG`: the filter's own parser, the checks that span the resources
//! `manifests` would render from it, and warnings for risky settings.

use anyhow::{bail, Result};

use crate::cli::{CheckArgs, Output};
use crate::plugin_config;
use crate::render::{self, Network, Options, Target};

/// Options for checking a configuration on its own: a sidecar install in `default`, no flags.
fn standalone() -> Options {
    Options {
        name: render::FILTER_NAME.into(),
        namespace: "default".into(),
        target: Target::Selector(Default::default()),
        extension_api: render::FilterApi::WasmPlugin,
        repository: String::new(),
        digest: String::new(),
        fail_open: false,
        phase: String::new(),
        priority: None,
        pull_secret: None,
        workloads: Default::default(),
        max_in_flight: 1,
        min_replicas: 1,
        max_replicas: 1,
        principals: Vec::new(),
        network: Network::default(),
        pod_selectors: Default::default(),
        subset_labels: Default::default(),
        only: Vec::new(),
        skip: Vec::new(),
    }
}

pub fn run(args: &CheckArgs) -> Result<()> {
    let path = args.config.path();
    let json = args.output == Output::Json;
    let loaded = match plugin_config::load(&path) {
        Ok(l) => l,
        Err(e) if json => {
            // Scripts get the problem as data too (and the exit status 1).
            println!(
                "{}",
                serde_json::json!({"valid": false, "errors": [e.to_string()], "warnings": []})
            );
            eprintln!(
                "error: {} is not valid (the JSON on standard output says why)",
                path.display()
            );
            std::process::exit(1);
        }
        Err(e) => return Err(e),
    };
    let c = &loaded.config;
    let mut warnings = plugin_config::warnings(c);
    let problems: Vec<String> = match render::plan(c, &standalone()) {
        Ok(_) => Vec::new(),
        Err(p) => p
            .iter()
            .filter(|p| {
                // A cluster name Istio would not create is fine for `wasmpack run` and plain
                // Envoy: `manifests` refuses it, `check` warns.
                let istio_only = p.at == "rateLimitService.cluster";
                if istio_only {
                    warnings.push((p.at.clone(), format!("{} (needed for `wasmpack manifests`)", p.message)));
                }
                !istio_only
            })
            .map(ToString::to_string)
            .collect(),
    };
    let destinations: usize = c.models.iter().map(|m| m.destinations.len()).sum();
    if json {
        let w: Vec<serde_json::Value> = warnings
            .iter()
            .map(|(p, m)| serde_json::json!({"path": p, "message": m}))
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "valid": problems.is_empty(), "errors": problems, "warnings": w,
                "models": c.models.len(), "aliases": c.models.iter().map(|m| m.aliases.len()).sum::<usize>(),
                "destinations": destinations, "bodyRouting": c.body_routing,
            })
        );
        if !problems.is_empty() {
            eprintln!(
                "error: {} is not valid (the JSON on standard output says why)",
                path.display()
            );
            std::process::exit(1);
        }
        return Ok(());
    }
    if !problems.is_empty() {
        bail!("{}:\n  {}", path.display(), problems.join("\n  "));
    }
    for (path, message) in &warnings {
        println!("warning: {path}: {message}");
    }
    println!(
        "{}: valid ({} models, {} aliases, {} destinations; bodyRouting {})",
        path.display(),
        c.models.len(),
        c.models.iter().map(|m| m.aliases.len()).sum::<usize>(),
        destinations,
        if c.body_routing { "on" } else { "off" }
    );
    Ok(())
}
