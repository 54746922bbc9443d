//! `outpost server`: the control plane. Configuration from a TOML file, `OUTPOST_*` environment
//! and flags (in rising precedence); the defaults need nothing installed: an SQLite file in
//! `outpost-data/` and a bootstrap admin token written next to it.

use anyhow::{Context, Result};
use clap::Args;
use outpost_server::{Server, ServerConfig};
use std::net::SocketAddr;
use std::path::PathBuf;

/// Flags of `outpost server`; each overrides the config file.
#[derive(Debug, Args)]
pub struct ServerArgs {
    /// TOML configuration file (keys as in the README's server configuration table).
    #[arg(long, short, env = "OUTPOST_SERVER_CONFIG")]
    config: Option<PathBuf>,
    /// Address of the REST API [default: 127.0.0.1:8700].
    #[arg(long, env = "OUTPOST_SERVER_LISTEN")]
    listen: Option<SocketAddr>,
    /// Data directory: SQLite database and bootstrap admin token [default: outpost-data].
    #[arg(long, env = "OUTPOST_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Database URL: sqlite:PATH or postgres://user@host/db [default: sqlite:<data-dir>/outpost.db].
    #[arg(long, env = "OUTPOST_DATABASE")]
    database: Option<String>,
    /// Database connections for the device channel [default: 12].
    #[arg(long, env = "OUTPOST_MAX_CONNECTIONS")]
    max_connections: Option<u32>,
    /// Database connections for the operator API, apart from the device channel's [default: 4].
    #[arg(long, env = "OUTPOST_OPERATOR_MAX_CONNECTIONS")]
    operator_max_connections: Option<u32>,
    /// Longest an operator database query may run, milliseconds [default: 5000].
    #[arg(long, env = "OUTPOST_OPERATOR_QUERY_TIMEOUT_MS")]
    operator_query_timeout_ms: Option<u64>,
    /// Seconds without a heartbeat before a device is stale [default: 90].
    #[arg(long, env = "OUTPOST_STALE_AFTER_S")]
    stale_after_s: Option<u64>,
    /// Seconds without a heartbeat before a device is offline [default: 300].
    #[arg(long, env = "OUTPOST_OFFLINE_AFTER_S")]
    offline_after_s: Option<u64>,
    /// Heartbeat interval asked of devices, seconds [default: 30].
    #[arg(long, env = "OUTPOST_HEARTBEAT_INTERVAL_S")]
    heartbeat_interval_s: Option<u32>,
    /// Tokio worker threads [default: number of cores].
    #[arg(long, env = "OUTPOST_SERVER_THREADS")]
    threads: Option<usize>,
}

impl ServerArgs {
    /// Merges file, environment and flags into one configuration.
    pub fn config(&self) -> Result<ServerConfig> {
        let mut c = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
                toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?
            }
            None => ServerConfig::default(),
        };
        macro_rules! set {
            ($($f:ident),*) => {$( if let Some(v) = &self.$f { c.$f = v.clone(); } )*};
        }
        set!(
            listen,
            data_dir,
            max_connections,
            operator_max_connections,
            operator_query_timeout_ms,
            stale_after_s,
            offline_after_s,
            heartbeat_interval_s
        );
        if self.database.is_some() {
            c.database = self.database.clone();
        }
        Ok(c)
    }
}

/// Runs the server until interrupted.
pub fn run(args: ServerArgs) -> Result<()> {
    let config = args.config()?;
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = args.threads {
        rt.worker_threads(n.max(1));
    }
    let rt = rt.enable_all().build().context("starting the async runtime")?;
    rt.block_on(async move {
        let server = Server::start(config.clone()).await?;
        println!(
            "outpost server listening on http://{} (database: {})",
            server.addr,
            outpost_server::redact_url(&config.database_url())
        );
        let token = config.data_dir.join("admin.token");
        if token.exists() {
            println!("bootstrap admin token: {} (use it, then create named tokens and delete it)", token.display());
        }
        let stop = server.shutdown_handle();
        tokio::spawn(async move {
            crate::agent::shutdown_signal().await;
            tracing::info!("shutting down; finishing in-flight requests");
            stop.shutdown();
        });
        server.wait().await?;
        Ok(())
    })
}
