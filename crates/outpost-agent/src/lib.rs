//! outpost-agent: the daemon on each device.
//!
//! It serves the models found in a model directory through a local inference API (Open
//! Inference Protocol v2 REST plus a raw-data pipeline endpoint), keeps the served set in step
//! with the directory (new versions swap in atomically), and exports Prometheus metrics. It
//! works fully offline; with a `server` configured it also joins the fleet through the
//! [`control`] channel (enrollment, heartbeats, desired state, remote commands).
//!
//! [`Agent::start`] binds the listener, scans the model directory once, then serves while a
//! background task rescans the directory.

pub mod config;
pub mod control;
pub mod export;
pub mod footprint;
pub mod http;
pub mod metrics;
pub mod shadow;
pub mod store;
pub mod telemetry;

pub use config::AgentConfig;

use http::ApiState;
use metrics::Metrics;
use outpost_runtime::model::MemoryBudget;
use outpost_runtime::LoadOptions;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use store::ModelStore;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The configuration is inconsistent.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The listen address cannot be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Address asked for.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// Serving failed.
    #[error("server error: {0}")]
    Serve(std::io::Error),
    /// The control-plane channel cannot start (device key, outbox).
    #[error("control channel: {0}")]
    Control(#[from] control::ControlError),
    /// Result export cannot start.
    #[error(transparent)]
    Export(#[from] export::ExportError),
    /// A `restart_agent` command could not re-execute the agent.
    #[error("cannot restart the agent: {0}")]
    Restart(std::io::Error),
}

/// A running agent.
#[derive(Debug)]
pub struct Agent {
    /// Where the API listens (the real port when 0 was asked for).
    pub addr: SocketAddr,
    /// Shared state, for in-process callers and tests.
    pub state: Arc<ApiState>,
    shutdown: watch::Sender<bool>,
    server: JoinHandle<Result<(), AgentError>>,
    watcher: JoinHandle<()>,
    control: Option<control::ControlChannel>,
    restart: control::RestartHook,
}

impl Agent {
    /// Binds, scans the model directory once, and starts serving and watching (and the control
    /// channel when `config.server` is set).
    pub async fn start(config: AgentConfig) -> Result<Agent, AgentError> {
        Agent::start_with_restart(config, control::RestartHook::reexec()).await
    }

    /// [`Agent::start`] with the step a `restart_agent` command runs after the agent stopped
    /// (tests pass one that records the restart instead of re-executing the process).
    pub async fn start_with_restart(config: AgentConfig, restart: control::RestartHook) -> Result<Agent, AgentError> {
        let options = load_options(&config)?;
        std::fs::create_dir_all(&config.model_dir)
            .map_err(|e| AgentError::Config(format!("model_dir {}: {e}", config.model_dir.display())))?;
        let metrics = Arc::new(Metrics::new());
        let budget = MemoryBudget::new(config.memory_budget_mb.saturating_mul(1 << 20));
        let store = Arc::new(ModelStore::new(options, budget, metrics.clone()));
        let state = Arc::new(ApiState {
            store: store.clone(),
            metrics: metrics.clone(),
            scanned: AtomicBool::new(false),
            max_body_bytes: config.max_body_bytes,
            bodies: http::budget::BodyBudget::new(config.max_inflight_body_bytes),
            predict: http::predict::PredictGate::new(config.sessions, config.queue_capacity),
            shadows: Arc::new(shadow::Shadows::new(config.shadow_cpu_share)),
            export: start_export(&config, &metrics).await?,
        });
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| AgentError::Bind { addr: config.listen, source })?;
        let addr = listener.local_addr().map_err(AgentError::Serve)?;
        let (shutdown, mut stop) = watch::channel(false);

        let dir = config.model_dir.clone();
        // In a fleet, the versions the server last asked for and what probation blocked are on
        // disk: both apply before the first scan, so a restart (also one without the server)
        // serves what was serving, and a version that crashed the agent is not loaded again.
        let probation = config.server.as_ref().map(|_| {
            if let Some(desired) = control::pins::load(&config.data_dir) {
                store.set_desired(desired);
            }
            let shadows = control::pins::load_shadows(&config.data_dir);
            store.set_shadows(shadows.into_iter().map(|(name, spec)| (name, spec.version)).collect());
            let window = std::time::Duration::from_secs(config.probation_s);
            let p =
                control::probation::Probation::start(&config.data_dir, window, store.clone(), state.metrics.clone());
            let retention = control::prune::Retention {
                keep_versions: config.keep_versions,
                budget_bytes: config.package_budget_mb.saturating_mul(1 << 20),
            };
            p.prune_after_passing(config.model_dir.clone(), retention);
            p
        });
        let first = {
            let (store, dir) = (store.clone(), dir.clone());
            tokio::task::spawn_blocking(move || store.sync(&dir))
        };
        if let Err(e) = first.await {
            tracing::error!(error = %e, "the first model directory scan failed");
        }
        footprint::release_code_pages();
        state.scanned.store(true, Ordering::Release);
        tracing::info!(%addr, models = store.slots().len(), dir = %dir.display(), "agent serving");

        let settings = Arc::new(control::settings::Settings::new(config.poll_interval_ms));
        tokio::spawn(telemetry::run(store.clone(), state.metrics.clone(), state.export.clone(), stop.clone()));
        let watcher = {
            let (store, mut stop, settings) = (store.clone(), stop.clone(), settings.clone());
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(settings.poll_interval()) => {}
                        _ = stop.changed() => return,
                    }
                    let (store, dir) = (store.clone(), dir.clone());
                    match tokio::task::spawn_blocking(move || store.sync(&dir)).await {
                        Ok(true) => footprint::release_code_pages(),
                        Ok(false) => {}
                        Err(e) => tracing::error!(error = %e, "model directory scan failed"),
                    }
                }
            })
        };
        let control = match &config.server {
            Some(server) => {
                let mut options =
                    control::ControlOptions::new(server, config.data_dir.clone(), config.model_dir.clone());
                options.enroll_token = config.enroll_token.clone();
                options.device_name = config.device_name.clone();
                options.tuf_root = config.tuf_root.clone();
                options.probation = std::time::Duration::from_secs(config.probation_s);
                options.probation_state = probation.clone();
                let (metrics, shadows) = (state.metrics.clone(), state.shadows.clone());
                Some(
                    control::ControlChannel::start(
                        options,
                        store.clone(),
                        metrics,
                        shadows,
                        settings,
                        shutdown.clone(),
                        state.export.clone(),
                    )
                    .await?,
                )
            }
            None => None,
        };
        let app = http::router(state.clone());
        let server = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stop.changed().await;
                })
                .await
                .map_err(AgentError::Serve)
        });
        Ok(Agent { addr, state, shutdown, server, watcher, control, restart })
    }

    /// Rescans the model directory now instead of waiting for the next poll.
    pub async fn rescan(&self, dir: std::path::PathBuf) {
        let store = self.state.store.clone();
        let _ = tokio::task::spawn_blocking(move || store.sync(&dir)).await;
    }

    /// The control channel's progress, when a server is configured.
    pub fn control(&self) -> Option<&Arc<control::ControlStatus>> {
        self.control.as_ref().map(|c| c.status())
    }

    /// Stops accepting requests, lets in-flight ones finish, and returns.
    pub async fn shutdown(self) -> Result<(), AgentError> {
        let _ = self.shutdown.send(true);
        if let Some(control) = self.control {
            control.stop().await;
        }
        let _ = self.watcher.await;
        if let Some(export) = &self.state.export {
            export.shutdown().await;
        }
        self.server.await.map_err(|e| AgentError::Serve(std::io::Error::other(e)))?
    }

    /// Serves until the server stops (or fails). When a `restart_agent` command stopped it, runs
    /// the restart step (which re-executes the agent and does not return on success).
    pub async fn wait(self) -> Result<(), AgentError> {
        let result = self.server.await.map_err(|e| AgentError::Serve(std::io::Error::other(e)))?;
        self.watcher.abort();
        let restart = self.control.as_ref().is_some_and(|c| c.status().restart_requested());
        if let Some(control) = self.control {
            control.stop().await;
        }
        if let Some(export) = &self.state.export {
            export.shutdown().await;
        }
        result?;
        if restart {
            self.restart.run().map_err(AgentError::Restart)?;
        }
        Ok(())
    }

    /// A handle that stops the agent when sent `true`.
    pub fn shutdown_handle(&self) -> watch::Sender<bool> {
        self.shutdown.clone()
    }
}

fn load_options(config: &AgentConfig) -> Result<LoadOptions, AgentError> {
    let backend = match &config.backend {
        Some(b) => Some(b.parse().map_err(AgentError::Config)?),
        None => None,
    };
    if !(0.0..=1.0).contains(&config.shadow_cpu_share) {
        return Err(AgentError::Config(format!(
            "shadow_cpu_share is {}; it is a share of one core, from 0 (no shadow runs) to 1",
            config.shadow_cpu_share
        )));
    }
    if config.sessions == 0 || config.queue_capacity == 0 {
        return Err(AgentError::Config("sessions and queue_capacity must be at least 1".into()));
    }
    if config.max_inflight_body_bytes < config.max_body_bytes {
        return Err(AgentError::Config(format!(
            "max_inflight_body_bytes ({}) must be at least max_body_bytes ({}), or no body of the largest size fits",
            config.max_inflight_body_bytes, config.max_body_bytes
        )));
    }
    Ok(LoadOptions {
        backend,
        sessions: config.sessions,
        queue_capacity: config.queue_capacity,
        threads: config.threads.max(1),
        shape_plans: config.shape_plans,
        ort_library: config.ort_library.clone(),
        run_selftest: config.selftest,
        measure_backends: config.measure_backends,
        drift: config.drift.settings().map_err(AgentError::Config)?,
    })
}

/// Starts result export when a sink is configured (MQTT, or the server the agent reports to). Records name the device by the id its key
/// gives (the one the server enrolls it under) and carry the labels of its enrollment.
async fn start_export(config: &AgentConfig, metrics: &Metrics) -> Result<Option<Arc<export::Exporter>>, AgentError> {
    let to_server = config.export.server && config.server.is_some();
    if config.export.mqtt.is_none() && !to_server {
        if !config.export.models.is_empty() {
            tracing::warn!(
                "export.models is set but no sink is (no [export.mqtt], no server): results are not exported"
            );
        }
        return Ok(None);
    }
    let key = control::identity::load_or_create_key(&config.data_dir).map_err(control::ControlError::from)?;
    let labels = config
        .server
        .as_deref()
        .and_then(|server| control::identity::load_enrollment(&config.data_dir, server))
        .map(|e| e.labels.into_iter().collect())
        .unwrap_or_default();
    let exporter = export::Exporter::start(&config.export, &config.data_dir, key.device_id(), labels, metrics).await?;
    Ok(Some(exporter))
}
