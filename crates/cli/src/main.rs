//! `outpost`: one binary for the device agent and the tools around it.
//!
//! Subcommands only parse arguments and wire crates together; the logic lives in the library
//! crates (`outpost-agent`, `outpost-server`, `outpost-sim`, `outpost-runtime`, `outpost-train`).

mod agent;
mod bandwidth_bench;
mod catch_up_bench;
mod delta;
mod delta_lossy;
mod demo;
mod demo_delivery;
mod demo_drift;
mod demo_fleet;
mod demo_rollout;
mod demo_traffic;
mod fleet;
mod http_bench;
mod keys;
mod model;
mod pack;
mod reference;
mod server;
mod sim;
mod tuf;

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
    /// Run the control-plane server (embedded SQLite by default).
    Server(server::ServerArgs),
    /// Create, list and revoke enrollment and API tokens.
    #[command(subcommand)]
    Token(fleet::token::TokenCommand),
    /// List, inspect, label, revoke and command devices.
    #[command(subcommand)]
    Device(fleet::device::DeviceCommand),
    /// Fleet-wide views.
    #[command(subcommand)]
    Fleet(fleet::device::FleetCommand),
    /// Move a model version over the fleet in waves gated on health; watch, pause, roll back.
    #[command(subcommand)]
    Rollout(fleet::rollout::RolloutCommand),
    /// Alerts the server's rules raise (drift), with the devices that raised them.
    #[command(subcommand)]
    Alert(fleet::alert::AlertCommand),
    /// Drift of the data each model version sees, per label group.
    Drift(fleet::alert::DriftArgs),
    /// Simulate a fleet of devices speaking the real protocol to a server.
    Sim(sim::SimArgs),
    /// Train the demo model, start a server, agents and a simulated fleet, show it working.
    Demo(demo::DemoArgs),
    /// The TUF keys of the server's repository: init, show, rotate.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// The device's TUF client, for any harness: init ROOT_JSON, refresh, download.
    TufClient(tuf::TufClientArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let filter = std::env::var("RUST_LOG").unwrap_or(cli.log.clone());
    // Logs go to stderr and into the in-memory ring the `collect_logs` remote command reads.
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    tracing_subscriber::registry()
        .with(tracing_subscriber::EnvFilter::try_new(&filter).unwrap_or_else(|_| "info".into()))
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .with(outpost_agent::control::logs::LogRing::global().clone())
        .init();
    if matches!(
        cli.command,
        Command::Token(_)
            | Command::Device(_)
            | Command::Fleet(_)
            | Command::Rollout(_)
            | Command::Alert(_)
            | Command::Drift(_)
    ) {
        // Rust ignores SIGPIPE so that long-running servers see EPIPE; short listing commands
        // should instead end quietly when their reader (`head`, `less`) goes away.
        // SAFETY: called before any other thread exists; SIG_DFL is a valid disposition.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let result = match cli.command {
        Command::Agent(args) => agent::run(args),
        Command::Model(cmd) => model::run(cmd),
        Command::Server(args) => server::run(args),
        Command::Token(cmd) => fleet::token::run(cmd),
        Command::Device(cmd) => fleet::device::run(cmd),
        Command::Fleet(cmd) => fleet::device::run_fleet(cmd),
        Command::Rollout(cmd) => fleet::rollout::run(cmd),
        Command::Alert(cmd) => fleet::alert::run(cmd),
        Command::Drift(args) => fleet::alert::drift(args),
        Command::Sim(args) => sim::run(args),
        Command::Demo(args) => demo::run(args),
        Command::TufClient(args) => tuf::run(args),
        Command::Keys(cmd) => keys::run(cmd),
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
