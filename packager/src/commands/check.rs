//! `wasmpack check CONFIG`: the filter's own parser, plus warnings for risky settings.

use anyhow::Result;

use crate::cli::CheckArgs;
use crate::plugin_config;

pub fn run(args: &CheckArgs) -> Result<()> {
    let loaded = plugin_config::load(&args.config)?;
    let c = &loaded.config;
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
