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

/// One error or warning, the same shape for both (`check --output json`; docs/configuration.md).
fn item(d: &plugin_config::Diagnostic) -> serde_json::Value {
    serde_json::to_value(d).unwrap_or_default()
}

pub fn run(args: &CheckArgs) -> Result<()> {
    let path = args.config.path();
    let json = args.output == Output::Json;
    let loaded = match plugin_config::load_diagnosed(&path) {
        Ok(l) => l,
        Err(d) if json => {
            // Scripts get the problem as data too (and the exit status 1).
            println!(
                "{}",
                serde_json::json!({"valid": false, "errors": [item(&d)], "warnings": []})
            );
            eprintln!(
                "error: {} is not valid (the JSON on standard output says why)",
                path.display()
            );
            std::process::exit(1);
        }
        Err(_) => {
            plugin_config::load(&path)?;
            bail!("{}: not valid", path.display());
        }
    };
    // Warnings and the problems `manifests` would find are placed in the file as the parser's
    // errors are: by the field path, with the YAML parser's positions.
    let places = plugin_config::Places::of(&std::fs::read_to_string(&path).unwrap_or_default());
    let diag = |p: &str, m: &str, kind| plugin_config::Diagnostic::at(&places, p, m, kind);
    let c = &loaded.config;
    let mut warnings: Vec<plugin_config::Diagnostic> = plugin_config::warnings(c)
        .iter()
        .map(|(p, m)| diag(p, m, "warning"))
        .collect();
    let problems: Vec<plugin_config::Diagnostic> = match render::plan(c, &standalone()) {
        Ok(_) => Vec::new(),
        Err(p) => p
            .iter()
            .filter(|p| {
                // A cluster name Istio would not create is fine for `wasmpack run` and plain
                // Envoy: `manifests` refuses it, `check` warns.
                let istio_only = p.at == "rateLimitService.cluster";
                if istio_only {
                    warnings.push(diag(
                        &p.at,
                        &format!("{} (needed for `wasmpack manifests`)", p.message),
                        "warning",
                    ));
                }
                !istio_only
            })
            .map(|p| diag(&p.at, &p.message, "invalid"))
            .collect(),
    };
    let destinations: usize = c.models.iter().map(|m| m.destinations.len()).sum();
    if json {
        println!(
            "{}",
            serde_json::json!({
                "valid": problems.is_empty(),
                "errors": problems.iter().map(item).collect::<Vec<_>>(),
                "warnings": warnings.iter().map(item).collect::<Vec<_>>(),
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
    let at = |d: &plugin_config::Diagnostic| match (d.line, d.column) {
        (Some(l), Some(c)) => format!("{}:{l}:{c}: {}: {}", path.display(), d.path, d.message),
        (Some(l), None) => format!("{}:{l}: {}: {}", path.display(), d.path, d.message),
        _ => format!("{}: {}", d.path, d.message),
    };
    for w in &warnings {
        println!("warning: {}", at(w));
    }
    // One line per problem, in the form of the parser's errors; then the count.
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("error: {}", at(p));
        }
        let n = problems.len();
        bail!(
            "{}: not valid ({n} {})",
            path.display(),
            if n == 1 { "problem" } else { "problems" }
        );
    }
    let count = |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    println!(
        "{}: valid ({}, {}, {}; bodyRouting {})",
        path.display(),
        count(c.models.len(), "model", "models"),
        count(
            c.models.iter().map(|m| m.aliases.len()).sum::<usize>(),
            "alias",
            "aliases"
        ),
        count(destinations, "destination", "destinations"),
        if c.body_routing { "on" } else { "off" }
    );
    Ok(())
}
