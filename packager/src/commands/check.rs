//! `wasmpack check CONFIG`: the filter's own parser, the checks that span the resources
//! `manifests` would render from it, and warnings for risky settings.

use anyhow::{bail, Result};

use crate::cli::CheckArgs;
use crate::plugin_config;
use crate::render::{self, Network, Options, Target};

/// Options for checking a configuration on its own: a sidecar install in `default`, no flags.
fn standalone() -> Options {
    Options {
        name: render::FILTER_NAME.into(),
        namespace: "default".into(),
        target: Target::Selector(Default::default()),
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
    let loaded = plugin_config::load(&args.config)?;
    let c = &loaded.config;
    if let Err(problems) = render::plan(c, &standalone()) {
        let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
        bail!("{}:\n  {}", args.config.display(), lines.join("\n  "));
    }
    let destinations: usize = c.models.iter().map(|m| m.destinations.len()).sum();
    for (path, message) in plugin_config::warnings(c) {
        println!("warning: {path}: {message}");
    }
    println!(
        "{}: valid ({} models, {} aliases, {} destinations; bodyRouting {})",
        args.config.display(),
        c.models.len(),
        c.models.iter().map(|m| m.aliases.len()).sum::<usize>(),
        destinations,
        if c.body_routing { "on" } else { "off" }
    );
    Ok(())
}
