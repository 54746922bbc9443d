//! The control-plane channel: the agent's side of enrollment, heartbeats, desired state and
//! remote commands.
//!
//! The channel is optional and never in the way of serving: the agent serves its models from
//! the first second whether or not the server is reachable, enrollment retries in the
//! background, reports made while offline wait in the [`outbox`] and are delivered in order once
//! the server answers again, and a revoked device stops talking but keeps serving locally.
//!
//! Everything the device sends is signed with its own key ([`identity`]) through the
//! [`client::DeviceClient`], which the fleet simulator reuses. [`ControlChannel::start`] wires
//! the pieces: one task enrolls, then runs a heartbeat loop and a long-poll loop for the desired
//! state (see `session.rs`).

pub mod client;
pub mod commands;
pub mod fetch;
pub mod identity;
pub mod logs;
pub mod outbox;
pub mod pins;
pub mod probation;
pub mod prune;
pub mod report;
mod session;
pub(crate) use session::{backoff, stopped};
pub mod settings;
pub mod shadow;
pub mod system;

use crate::metrics::Metrics;
use crate::store::ModelStore;
use logs::LogRing;
use outpost_proto::fleet::device::DesiredModel;
use settings::Settings;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What `restart_agent` does once the agent has stopped: by default re-execute the binary
/// ([`reexec_current_binary`]), which returns only on failure. Injectable so tests can observe a
/// restart without one happening.
#[derive(Clone)]
pub struct RestartHook(Arc<dyn Fn() -> std::io::Result<()> + Send + Sync>);

impl RestartHook {
    /// A hook running `f`.
    pub fn new(f: impl Fn() -> std::io::Result<()> + Send + Sync + 'static) -> RestartHook {
        RestartHook(Arc::new(f))
    }

    /// The real restart: re-execute the current binary with the same arguments.
    pub fn reexec() -> RestartHook {
        RestartHook::new(reexec_current_binary)
    }

    /// Runs the hook.
    pub fn run(&self) -> std::io::Result<()> {
        (self.0)()
    }
}

impl std::fmt::Debug for RestartHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RestartHook")
    }
}

/// Re-executes the current binary with the same arguments (the real `restart_agent`).
pub fn reexec_current_binary() -> std::io::Result<()> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe()?;
    tracing::warn!(exe = %exe.display(), "restarting the agent");
    Err(std::process::Command::new(exe).args(std::env::args_os().skip(1)).exec())
}

/// Why the channel cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The device key cannot be loaded or created.
    #[error(transparent)]
    Identity(#[from] identity::IdentityError),
    /// The outbox cannot be read.
    #[error(transparent)]
    Outbox(#[from] outbox::OutboxError),
    /// The HTTP client cannot be built.
    #[error(transparent)]
    Client(#[from] client::ClientError),
}

/// How the channel connects.
#[derive(Debug, Clone)]
pub struct ControlOptions {
    /// Server base URL, e.g. `http://127.0.0.1:8700`.
    pub server: String,
    /// One-time enrollment token; needed only until the device is enrolled.
    pub enroll_token: Option<String>,
    /// Device name sent at enrollment (default: the host name).
    pub device_name: Option<String>,
    /// Where the key, enrollment record and outbox live.
    pub data_dir: PathBuf,
    /// The model directory (for `reload_models` and `reverify_models`).
    pub model_dir: PathBuf,
    /// How long each desired-state long-poll asks the server to hold (at most 30 s).
    pub poll_wait: Duration,
    /// Bytes of reports and acknowledgements kept while offline (the oldest reports are dropped
    /// past it).
    pub outbox_max_bytes: u64,
    /// Log lines `collect_logs` reads.
    pub logs: LogRing,
    /// The TUF root the device trusts (see [`crate::AgentConfig::tuf_root`]).
    pub tuf_root: Option<PathBuf>,
    /// How long a newly activated version is watched before it is trusted.
    pub probation: Duration,
    /// The probation state the agent loaded before its first scan (made here when absent).
    pub probation_state: Option<std::sync::Arc<probation::Probation>>,
}

impl ControlOptions {
    /// Options with documented defaults for `server`, `data_dir` and `model_dir`.
    pub fn new(server: &str, data_dir: PathBuf, model_dir: PathBuf) -> ControlOptions {
        ControlOptions {
            server: server.trim_end_matches('/').to_string(),
            enroll_token: None,
            device_name: None,
            data_dir,
            model_dir,
            poll_wait: client::MAX_POLL_WAIT,
            outbox_max_bytes: outbox::DEFAULT_MAX_BYTES,
            logs: LogRing::global().clone(),
            tuf_root: None,
            probation: Duration::from_secs(60),
            probation_state: None,
        }
    }
}

/// What the channel has achieved so far, readable while it runs.
#[derive(Debug, Default)]
pub struct ControlStatus {
    device_id: Mutex<Option<String>>,
    last_contact_ms: AtomicI64,
    queued_reports: AtomicUsize,
    dropped_reports: AtomicU64,
    heartbeats_sent: AtomicU64,
    commands_executed: AtomicU64,
    revoked: AtomicBool,
    restart_requested: AtomicBool,
    applied_etag: Mutex<String>,
    desired: Mutex<Vec<DesiredModel>>,
}

impl ControlStatus {
    /// The enrolled device id, once enrolled.
    pub fn device_id(&self) -> Option<String> {
        self.device_id.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Last successful exchange with the server, Unix milliseconds (0: never).
    pub fn last_contact_ms(&self) -> i64 {
        self.last_contact_ms.load(Ordering::Relaxed)
    }

    /// Reports waiting in the outbox.
    pub fn queued_reports(&self) -> usize {
        self.queued_reports.load(Ordering::Relaxed)
    }

    /// Reports dropped because the outbox was full.
    pub fn dropped_reports(&self) -> u64 {
        self.dropped_reports.load(Ordering::Relaxed)
    }

    /// Heartbeats the server accepted.
    pub fn heartbeats_sent(&self) -> u64 {
        self.heartbeats_sent.load(Ordering::Relaxed)
    }

    /// Commands run.
    pub fn commands_executed(&self) -> u64 {
        self.commands_executed.load(Ordering::Relaxed)
    }

    /// Whether the server revoked this device.
    pub fn is_revoked(&self) -> bool {
        self.revoked.load(Ordering::Relaxed)
    }

    /// Whether a `restart_agent` command asked for a restart.
    pub fn restart_requested(&self) -> bool {
        self.restart_requested.load(Ordering::Relaxed)
    }

    /// ETag of the desired state applied last.
    pub fn applied_etag(&self) -> String {
        self.applied_etag.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Models the server wants this device to serve.
    pub fn desired_models(&self) -> Vec<DesiredModel> {
        self.desired.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The running channel.
#[derive(Debug)]
pub struct ControlChannel {
    status: Arc<ControlStatus>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl ControlChannel {
    /// Loads (or creates) the device key and the outbox, then starts enrolling and talking to the
    /// server in the background. `shadows` receives the shadow candidates the server names;
    /// `agent_shutdown` stops the agent for `restart_agent`.
    pub async fn start(
        options: ControlOptions,
        store: Arc<ModelStore>,
        metrics: Arc<Metrics>,
        shadows: Arc<crate::shadow::Shadows>,
        settings: Arc<Settings>,
        agent_shutdown: watch::Sender<bool>,
        export: Option<Arc<crate::export::Exporter>>,
    ) -> Result<ControlChannel, ControlError> {
        let key = Arc::new(identity::load_or_create_key(&options.data_dir)?);
        let (outbox, backlog) = outbox::ControlOutbox::open(&options.data_dir, options.outbox_max_bytes).await?;
        let http = client::http_client(4)?;
        let status = Arc::new(ControlStatus::default());
        let counts = outbox.counts().await?;
        status.queued_reports.store(usize::try_from(counts.reports).unwrap_or(usize::MAX), Ordering::Relaxed);
        status.dropped_reports.store(counts.dropped, Ordering::Relaxed);
        let (stop, stop_rx) = watch::channel(false);
        let parts = session::Parts {
            options,
            key,
            http,
            outbox,
            backlog,
            export,
            store,
            metrics,
            shadows,
            settings,
            status: status.clone(),
            agent_shutdown,
            stop: stop.clone(),
        };
        let task = tokio::spawn(session::run(parts, stop_rx));
        Ok(ControlChannel { status, stop, task })
    }

    /// The channel's progress.
    pub fn status(&self) -> &Arc<ControlStatus> {
        &self.status
    }

    /// Stops talking to the server (queued items stay in the outbox).
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}
