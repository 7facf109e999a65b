//! wasmpack: build, check, push and install the model-router filter.

use std::process::ExitCode;

use clap::Parser;

use wasmpack::cli::{Cli, Command};
use wasmpack::commands;

fn main() -> ExitCode {
    // A closed pipe (`wasmpack stats --watch | head`) ends the program quietly, as it does any
    // Unix tool, instead of a panic on the next print. Rust ignores SIGPIPE by default.
    // SAFETY: setting a signal's disposition to the default, before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
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
        Command::Playground(a) => commands::playground::run(&a).await,
        Command::Schema => {
            println!("{}", wasmpack::schema::schema_json());
            Ok(())
        }
        Command::Completions(a) => {
            use clap::CommandFactory;
            let mut cmd = Cli::command();
            clap_complete::generate(a.shell, &mut cmd, "wasmpack", &mut std::io::stdout());
            Ok(())
        }
    }
}
