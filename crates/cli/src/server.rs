//! `outpost server`: the control plane. Configuration from a TOML file, `OUTPOST_*` environment
//! and flags (in rising precedence); the defaults need nothing installed: an SQLite file in
//! `outpost-data/` and a bootstrap admin token written next to it.

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use outpost_server::{Server, ServerConfig};
use std::net::SocketAddr;
use std::path::PathBuf;

/// Flags of `outpost server`; each overrides the config file.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ServerArgs {
    #[command(subcommand)]
    command: Option<ServerCommand>,
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

/// Local maintenance commands that work on the server's files and database, not over the API.
#[derive(Debug, Subcommand)]
enum ServerCommand {
    /// Mint a new admin API token straight in the database: the way back in when every admin
    /// token is lost or revoked. Needs access to the server's data directory or database, not
    /// to the API; prints the secret once.
    AdminToken(AdminTokenArgs),
}

/// Flags of `outpost server admin-token`: where the server keeps its data.
#[derive(Debug, Args)]
struct AdminTokenArgs {
    /// The server's TOML configuration file.
    #[arg(long, short, env = "OUTPOST_SERVER_CONFIG")]
    config: Option<PathBuf>,
    /// The server's data directory [default: outpost-data].
    #[arg(long, env = "OUTPOST_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// The server's database URL [default: sqlite:<data-dir>/outpost.db].
    #[arg(long, env = "OUTPOST_DATABASE")]
    database: Option<String>,
    /// Name of the new token (shown in listings and the audit log).
    #[arg(long, default_value = "recovery-admin")]
    name: String,
}

fn load_config(path: Option<&PathBuf>) -> Result<ServerConfig> {
    match path {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
        }
        None => Ok(ServerConfig::default()),
    }
}

impl ServerArgs {
    /// Merges file, environment and flags into one configuration.
    pub fn config(&self) -> Result<ServerConfig> {
        let mut c = load_config(self.config.as_ref())?;
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

/// Mints a recovery admin token in the configured database.
fn admin_token(args: AdminTokenArgs) -> Result<()> {
    let mut config = load_config(args.config.as_ref())?;
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    if args.database.is_some() {
        config.database = args.database;
    }
    let url = config.database_url();
    if url.starts_with("sqlite:") && !config.data_dir.join("outpost.db").exists() && config.database.is_none() {
        anyhow::bail!(
            "no server database at {}; pass the server's --data-dir or --database",
            config.data_dir.join("outpost.db").display()
        );
    }
    let rt =
        tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the async runtime")?;
    let token = rt.block_on(async {
        let db = outpost_server::db::Db::connect(&url, 1)
            .await
            .with_context(|| format!("opening the database {}", outpost_server::redact_url(&url)))?;
        let now = outpost_server::state::now_ms();
        let token = db.recover_admin_token(&args.name, "local:admin-token", now).await;
        db.close().await;
        Ok::<_, anyhow::Error>(token?)
    })?;
    println!("{}", token.secret.unwrap_or_default());
    eprintln!(
        "created admin API token {} ({:?}); it is shown only once. Revoke tokens you no longer trust with \
         `outpost token revoke`.",
        token.id, token.name
    );
    Ok(())
}

/// Runs the server until interrupted, or one of its local maintenance commands.
pub fn run(args: ServerArgs) -> Result<()> {
    if let Some(ServerCommand::AdminToken(a)) = args.command {
        return admin_token(a);
    }
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
        // Only a start that created the bootstrap token points at it: an older file may hold a
        // token that was revoked since (then `outpost server admin-token` is the way back in).
        if let Some(token) = &server.admin_token_path {
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
