//! `outpost`: one binary for the device agent and the tools around it.
//!
//! Subcommands only parse arguments and wire crates together; the logic lives in the library
//! crates (`outpost-agent`, `outpost-runtime`, `outpost-train`).

mod agent;
mod demo;
mod http_bench;
mod model;
mod pack;

use clap::{Parser, Subcommand};

/// outpost: edge AI infrastructure.
#[derive(Debug, Parser)]
#[command(name = "outpost", version, about)]
struct Cli {
    /// Log filter (e.g. `info`, `outpost_agent=debug`); also RUST_LOG.
    #[arg(long, global = true, env = "OUTPOST_LOG", default_value = "info")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the device agent: serve the models in a directory over the local inference API.
    Agent(agent::AgentArgs),
    /// Inspect, benchmark and package ONNX models.
    #[command(subcommand)]
    Model(model::ModelCommand),
    /// Train the demo anomaly model, start an agent, stream sensor windows, show detections.
    Demo(demo::DemoArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let filter = std::env::var("RUST_LOG").unwrap_or(cli.log.clone());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&filter).unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match cli.command {
        Command::Agent(args) => agent::run(args),
        Command::Model(cmd) => model::run(cmd),
        Command::Demo(args) => demo::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn command_line_definition_is_consistent() {
        <super::Cli as clap::CommandFactory>::command().debug_assert();
    }
}
