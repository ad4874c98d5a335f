//! The `metatopia` binary: arguments, logging, then the library.

use clap::Parser;

#[global_allocator]
static ALLOC: metatopia_scripts::alloc::Allocator = metatopia_scripts::alloc::Allocator;

fn main() -> std::process::ExitCode {
    metatopia_scripts::alloc::init();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = metatopia_node::cli::Cli::parse();
    match metatopia_node::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // A reader that closed our stdout (`metatopia status | head`) has
        // what it wanted: stop quietly, as a filter would.
        Err(e) if e.is::<metatopia_node::out::StdoutClosed>() => std::process::ExitCode::SUCCESS,
        Err(e) => {
            use std::io::Write as _;
            let _ = writeln!(std::io::stderr(), "metatopia: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
