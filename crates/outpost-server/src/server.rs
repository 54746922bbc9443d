//! Server lifecycle: connect the database, write the bootstrap admin token, bind, serve, run
//! the background tasks, and shut all of it down in order (stop accepting, end long-polls,
//! flush the report writer, close the pool).

use crate::auth::{DeviceAuth, TokenCache};
use crate::config::{secs_to_ms, ServerConfig};
use crate::db::{Db, DbError};
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::ratelimit::DeviceRateLimit;
use crate::replay::{spawn_nonce_writer, NONCE_PRUNE_MARGIN_MS};
use crate::reports::{spawn_writer, WriterOptions};
use crate::state::{now_ms, AppState, SharedState};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The data directory could not be created.
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        /// Directory.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The database could not be opened.
    #[error("cannot open the database {url}: {source}; check the `database` setting and that the server is reachable")]
    Database {
        /// URL with the password hidden.
        url: String,
        /// Cause.
        source: DbError,
    },
    /// A setting makes no sense.
    #[error("configuration: {0}")]
    Config(String),
    /// The artifact store could not be opened.
    #[error("cannot open the artifact store: {0}; check `artifact_store` and `artifact_store_options`")]
    ArtifactStore(String),
    /// Creating the bootstrap admin token failed.
    #[error("cannot create the bootstrap admin token: {0}")]
    Bootstrap(DbError),
    /// The admin token file could not be written.
    #[error("cannot write the admin token to {path}: {source}")]
    AdminToken {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}; pick another `listen` address")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// The HTTP server failed while running.
    #[error("the HTTP server failed: {0}")]
    Serve(std::io::Error),
}

/// A running control plane.
pub struct Server {
    /// The address actually bound (useful with port 0).
    pub addr: SocketAddr,
    /// Where the bootstrap admin token was written, when this start created one.
    pub admin_token_path: Option<PathBuf>,
    shutdown: watch::Sender<bool>,
    serve: JoinHandle<std::io::Result<()>>,
    tasks: Vec<JoinHandle<()>>,
    writer: JoinHandle<()>,
    nonce_writer: JoinHandle<()>,
    db: Db,
}

/// Stops a running [`Server`]; cheap to clone.
#[derive(Clone)]
pub struct ShutdownHandle(watch::Sender<bool>);

impl ShutdownHandle {
    /// Asks the server to stop.
    pub fn shutdown(&self) {
        let _ = self.0.send(true);
    }
}

/// Hides the password in a database URL for logs and errors.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

fn write_secret(path: &Path, secret: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(format!("{secret}\n").as_bytes())?;
    file.sync_all()
}

impl Server {
    /// Creates the data directory, connects the database and starts serving.
    pub async fn start(config: ServerConfig) -> Result<Server, ServerError> {
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|source| ServerError::DataDir { path: config.data_dir.clone(), source })?;
        let url = config.database_url();
        let db = Db::connect_with(&url, config.db_options())
            .await
            .map_err(|source| ServerError::Database { url: redact_url(&url), source })?;
        tracing::info!(database = %redact_url(&url), "database connected");
        Server::start_with_db(config, db).await
    }

    /// Starts serving on an already connected database.
    pub async fn start_with_db(config: ServerConfig, db: Db) -> Result<Server, ServerError> {
        crate::drift::check_rules(&config.alert_rules).map_err(ServerError::Config)?;
        db.set_history_interval_ms(secs_to_ms(config.history_interval_s));
        let admin_token_path = match db.bootstrap_admin_token(now_ms()).await.map_err(ServerError::Bootstrap)? {
            Some(token) => {
                let path = config.admin_token_path();
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir)
                        .map_err(|source| ServerError::DataDir { path: dir.to_path_buf(), source })?;
                }
                let secret = token.secret.unwrap_or_default();
                write_secret(&path, &secret)
                    .map_err(|source| ServerError::AdminToken { path: path.clone(), source })?;
                tracing::info!(path = %path.display(), "created the first admin API token; read it from this file");
                Some(path)
            }
            None => None,
        };
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| ServerError::Bind { addr: config.listen, source })?;
        let addr = listener.local_addr().map_err(|source| ServerError::Bind { addr: config.listen, source })?;

        // Spooled uploads a crash left behind belong to requests that are gone.
        let _ = std::fs::remove_dir_all(config.data_dir.join("uploads"));
        let artifacts = crate::artifacts::ArtifactStore::open(&config).map_err(ServerError::ArtifactStore)?;
        tracing::info!(store = artifacts.describe(), "artifact store");
        let uploads = config.max_concurrent_uploads.max(1);
        let deltas = Arc::new(crate::artifacts::delta::Deltas::new(config.data_dir.join("delta-work")));
        let data_dir = config.data_dir.clone();
        let metrics = Arc::new(Metrics::new());
        let writer_options = WriterOptions {
            batch_max: config.report_batch_max,
            capacity: config.report_batch_max.saturating_mul(4),
            window: config.report_window(),
            limit: Arc::new(DeviceRateLimit::new(config.device_report_burst, config.device_reports_per_min)),
        };
        let (reports, writer) = spawn_writer(db.clone(), writer_options, metrics.clone());
        let (nonces, nonce_writer) = spawn_nonce_writer(db.clone());
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let state: SharedState = Arc::new(AppState {
            db: db.clone(),
            devices: DeviceAuth::new(config.clock_skew_ms(), nonces),
            config,
            hub: Hub::new(),
            tokens: TokenCache::default(),
            reports,
            metrics,
            artifacts,
            tuf: crate::tuf::TufRepo::open(&data_dir),
            uploads: Arc::new(tokio::sync::Semaphore::new(uploads)),
            deltas,
            shutdown: shutdown_rx.clone(),
        });
        let mut tasks = spawn_maintenance(state.clone());
        let owner = format!("{}-{}", std::process::id(), hex::encode(rand::random::<[u8; 6]>()));
        tasks.push(crate::rollout::driver::spawn(state.clone(), owner));
        let app = crate::routes::router(state);
        let mut stop = shutdown_rx;
        let serve = tokio::spawn(crate::serve::run(listener, app, async move {
            let _ = stop.wait_for(|s| *s).await;
        }));
        tracing::info!(%addr, "outpost server listening");
        Ok(Server { addr, admin_token_path, shutdown: shutdown_tx, serve, tasks, writer, nonce_writer, db })
    }

    /// A handle that stops the server from elsewhere (a signal handler) while [`Server::wait`] runs.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(self.shutdown.clone())
    }

    /// Stops the server (no new connections, long-polls answer at once) and waits until it has
    /// stopped, the last reports are written and the database pool is closed.
    pub async fn shutdown(self) -> Result<(), ServerError> {
        let _ = self.shutdown.send(true);
        self.wait().await
    }

    /// Waits until the server has stopped (through a [`ShutdownHandle`]), the last reports are
    /// written and the database pool is closed.
    pub async fn wait(self) -> Result<(), ServerError> {
        let Server { shutdown, serve, tasks, writer, nonce_writer, db, .. } = self;
        let served = serve.await;
        let _ = shutdown.send(true);
        for task in tasks {
            let _ = task.await;
        }
        // The writer ends once the router (and with it every report queue handle) is gone.
        let _ = writer.await;
        let _ = nonce_writer.await;
        db.close().await;
        match served {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ServerError::Serve(e)),
            Err(e) => Err(ServerError::Serve(std::io::Error::other(e))),
        }
    }
}

fn spawn_maintenance(state: SharedState) -> Vec<JoinHandle<()>> {
    type Job = fn(SharedState) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;
    let every = |period: Duration, state: SharedState, job: Job| {
        tokio::spawn(async move {
            let mut stop = state.shutdown.clone();
            let mut ticker = tokio::time::interval(period);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticker.tick() => job(state.clone()).await,
                    _ = stop.changed() => break,
                }
            }
        })
    };
    vec![
        every(Duration::from_secs(10), state.clone(), |s| {
            Box::pin(async move {
                s.devices.prune();
                s.reports.prune_limits();
            })
        }),
        every(Duration::from_secs(30), state.clone(), |s| {
            Box::pin(async move {
                let repo = s.clone();
                match tokio::task::spawn_blocking(move || repo.tuf.refresh_online(std::time::SystemTime::now())).await {
                    Ok(Err(e)) => tracing::error!(error = %e, "cannot sign the TUF snapshot and timestamp"),
                    Err(e) => tracing::error!(error = %e, "TUF refresh panicked"),
                    Ok(Ok(_)) => {}
                }
            })
        }),
        every(Duration::from_secs(30), state.clone(), |s| {
            Box::pin(async move {
                // A nonce signed before the skew window can only come with a refused timestamp.
                let cutoff = now_ms().saturating_sub(s.devices.skew_ms()).saturating_sub(NONCE_PRUNE_MARGIN_MS);
                if let Err(e) = s.db.prune_nonces(cutoff).await {
                    tracing::warn!(error = %e, "pruning device nonces failed; will retry");
                }
            })
        }),
        every(Duration::from_secs(600), state.clone(), |s| {
            Box::pin(async move {
                let retention = secs_to_ms(s.config.history_retention_days.saturating_mul(86_400));
                let cutoff = now_ms().saturating_sub(retention);
                match s.db.prune_history(cutoff).await {
                    Ok(n) if n > 0 => tracing::info!(removed = n, "pruned device history"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "pruning device history failed; will retry"),
                }
            })
        }),
        every(Duration::from_secs(600), state.clone(), |s| {
            Box::pin(async move {
                let cutoff = now_ms().saturating_sub(secs_to_ms(s.config.version_stats_retention_s));
                match s.db.prune_version_stats(cutoff).await {
                    Ok(n) if n > 0 => tracing::info!(removed = n, "pruned per-version request windows"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "pruning per-version windows failed; will retry"),
                }
            })
        }),
        every(Duration::from_secs(600), state.clone(), |s| {
            Box::pin(async move {
                let cutoff = now_ms().saturating_sub(secs_to_ms(s.config.results_retention_s));
                match s.db.prune_results(cutoff).await {
                    Ok(n) if n > 0 => tracing::info!(removed = n, "pruned exported results"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "pruning exported results failed; will retry"),
                }
            })
        }),
        every(Duration::from_secs(15), state.clone(), |s| {
            Box::pin(async move {
                let fresh = now_ms().saturating_sub(secs_to_ms(s.config.drift_stale_s));
                match s.db.drift_entries(None, fresh).await {
                    Ok(entries) => {
                        let rules = crate::drift::rules_in_force(&s.config.alert_rules);
                        let alerts = crate::drift::evaluate(&rules, &entries);
                        s.metrics.set_drift(&crate::drift::summarize(&entries, None, None), &alerts);
                    }
                    Err(e) => tracing::warn!(error = %e, "reading drift for the metrics failed; will retry"),
                }
            })
        }),
        every(Duration::from_secs(600), state.clone(), |s| {
            Box::pin(async move {
                let cutoff = now_ms().saturating_sub(secs_to_ms(s.config.version_stats_retention_s));
                match s.db.prune_drift(cutoff).await {
                    Ok(n) if n > 0 => tracing::info!(removed = n, "pruned drift windows"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "pruning drift windows failed; will retry"),
                }
            })
        }),
        every(Duration::from_secs(60), state, |s| {
            Box::pin(async move {
                let cutoff = now_ms().saturating_sub(secs_to_ms(s.config.command_ttl_s));
                match s.db.expire_commands(cutoff).await {
                    Ok(n) if n > 0 => {
                        tracing::info!(expired = n, "expired unacknowledged commands");
                        s.hub.forget_etags();
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "expiring commands failed; will retry"),
                }
            })
        }),
    ]
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_never_reach_logs() {
        assert_eq!(redact_url("postgres://u:secret@h:5432/db"), "postgres://u:***@h:5432/db");
        assert_eq!(redact_url("sqlite:data/outpost.db"), "sqlite:data/outpost.db");
    }
}
