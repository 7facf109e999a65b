//! wasmpack: build, check, push and install the model-router filter.

use std::process::ExitCode;

use clap::Parser;

use wasmpack::cli::{Cli, Command};
use wasmpack::commands;

fn main() -> ExitCode {
    // clap exits with status 2 on bad usage.
    let cli = Cli::parse();
    wasmpack::commands::apply::install_crypto_provider();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the error and its context, outermost first.
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Build(a) => commands::build::run(&a),
        Command::Push(a) => commands::push::run(&a).await,
        Command::Pull(a) => commands::pull::run(&a).await,
        Command::Inspect(a) => commands::inspect::run(&a).await,
        Command::Check(a) => commands::check::run(&a),
        Command::Route(a) => commands::route::run(&a),
        Command::Manifests(a) => commands::manifests::run(&a).await,
        Command::Apply(a) => commands::apply::run_apply(&a).await,
        Command::Delete(a) => commands::apply::run_delete(&a).await,
        Command::Run(a) => commands::run::run(&a).await,
        Command::Stats(a) => commands::stats::run(&a).await,
    }
}
